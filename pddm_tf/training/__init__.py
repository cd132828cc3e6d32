"""Training as a function of a value: `train(TrainConfig(...))`, what `pddm-tf train` runs.

    from pddm_tf.training import TrainConfig, train
    metrics = train(TrainConfig.from_flags(epochs=5, export_dir="/tmp/model"))

Recipes are `TrainConfig`s too: `pddm_tf.methods.recipes.get_recipe("omniglot").config(epochs=3)`.

  config.py           `TrainConfig`, its groups and their sub-groups (no TensorFlow import: the CLI's flags are
                      made from it)
  config_checks.py    what `TrainConfig.check` refuses before any work (no TensorFlow import)
  dataset_defaults.py the settings whose default depends on the dataset (omniglot's 32 x 4 batches, rotations,
                      affine distortions), given by `TrainConfig.resolved()`
  run.py              `train(config)`, `fit(config)`, `build_model`, `load_split`
  optimizers.py       Adam / AdamW with warm-up and cosine decay (`make_optimizer`, `WarmupCosine`)
  distributed.py      strategies (mirrored, multi-worker), the chief, per-worker input, sharded embedding
  fault_tolerance.py  `BackupAndRestore` (every stateful part of a run) and `SamplerPosition`
  checks.py           `LearningCheck`: warns, or stops, after an epoch in which nothing was learned
  tensorboard.py      `TensorBoard`: training scalars, held-out metrics, a retrieval grid, projector files

Importing this package does not import TensorFlow (the command line's `--help` imports
`TrainConfig`): the names of the TensorFlow modules are imported when first used (PEP 562).
"""

from __future__ import annotations

from pddm_tf._lazy import lazy_attributes
from pddm_tf.training.config import (
    BatchConfig,
    DataConfig,
    DistributionConfig,
    DivideAndConquerConfig,
    EvaluationConfig,
    HDMLConfig,
    ImageConfig,
    MethodConfig,
    ModelConfig,
    OptimizationConfig,
    OutputConfig,
    PDDMConfig,
    RunConfig,
    TFDSConfig,
    TrainConfig,
)

# Public name -> the module that holds it, imported on first use (these modules import TensorFlow).
_LAZY: dict[str, str] = {
    "BackupAndRestore": "pddm_tf.training.fault_tolerance",
    "LearningCheck": "pddm_tf.training.checks",
    "NothingLearnedError": "pddm_tf.training.checks",
    "SamplerPosition": "pddm_tf.training.fault_tolerance",
    "TensorBoard": "pddm_tf.training.tensorboard",
    "Trained": "pddm_tf.training.run",
    "WarmupCosine": "pddm_tf.training.optimizers",
    "backup_status": "pddm_tf.training.fault_tolerance",
    "build_model": "pddm_tf.training.run",
    "distribute_training_data": "pddm_tf.training.distributed",
    "embed_files": "pddm_tf.training.distributed",
    "fit": "pddm_tf.training.run",
    "is_chief": "pddm_tf.training.distributed",
    "load_split": "pddm_tf.training.run",
    "make_optimizer": "pddm_tf.training.optimizers",
    "make_strategy": "pddm_tf.training.distributed",
    "train": "pddm_tf.training.run",
    "worker_info": "pddm_tf.training.distributed",
}

__all__ = [
    "BackupAndRestore",
    "BatchConfig",
    "DataConfig",
    "DistributionConfig",
    "DivideAndConquerConfig",
    "EvaluationConfig",
    "HDMLConfig",
    "ImageConfig",
    "LearningCheck",
    "MethodConfig",
    "ModelConfig",
    "NothingLearnedError",
    "OptimizationConfig",
    "OutputConfig",
    "PDDMConfig",
    "RunConfig",
    "SamplerPosition",
    "TFDSConfig",
    "TensorBoard",
    "TrainConfig",
    "Trained",
    "WarmupCosine",
    "backup_status",
    "build_model",
    "distribute_training_data",
    "embed_files",
    "fit",
    "is_chief",
    "load_split",
    "make_optimizer",
    "make_strategy",
    "train",
    "worker_info",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
