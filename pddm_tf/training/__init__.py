"""Training as a function of a value: `train(TrainConfig(...))`, what `pddm-tf train` runs.

    from pddm_tf.training import TrainConfig, train
    metrics = train(TrainConfig(method="triplet_batchhard", epochs=5, export_dir="/tmp/model"))

Recipes are `TrainConfig`s too: `pddm_tf.methods.recipes.get_recipe("omniglot").config(epochs=3)`.

  config.py           `TrainConfig` (no TensorFlow import: the CLI's flags and their defaults)
  run.py              `train(config)`, `fit(config)`, `build_model`, `load_split`
  optimizers.py       Adam / AdamW with warm-up and cosine decay (`make_optimizer`, `WarmupCosine`)
  distributed.py      strategies (mirrored, multi-worker), the chief, per-worker input, sharded embedding
  fault_tolerance.py  `BackupAndRestore` (every stateful part of a run) and `SamplerPosition`
  checks.py           `LearningCheck`: warns, or stops, after an epoch in which nothing was learned
  tensorboard.py      `TensorBoard`: training scalars, held-out metrics, a retrieval grid, projector files

Importing this package does not import TensorFlow (the command line's `--help` imports
`TrainConfig`): the names of the TensorFlow modules are imported when first used (PEP 562), and
running `train` imports what it needs.
"""

from __future__ import annotations

from pddm_tf._lazy import lazy_attributes
from pddm_tf.training.config import TrainConfig
from pddm_tf.training.run import Trained, build_model, fit, load_split, train

# Public name -> the module that holds it, imported on first use (these modules import TensorFlow).
_LAZY: dict[str, str] = {
    "BackupAndRestore": "pddm_tf.training.fault_tolerance",
    "LearningCheck": "pddm_tf.training.checks",
    "NothingLearnedError": "pddm_tf.training.checks",
    "SamplerPosition": "pddm_tf.training.fault_tolerance",
    "TensorBoard": "pddm_tf.training.tensorboard",
    "WarmupCosine": "pddm_tf.training.optimizers",
    "backup_status": "pddm_tf.training.fault_tolerance",
    "distribute_training_data": "pddm_tf.training.distributed",
    "embed_files": "pddm_tf.training.distributed",
    "is_chief": "pddm_tf.training.distributed",
    "make_optimizer": "pddm_tf.training.optimizers",
    "make_strategy": "pddm_tf.training.distributed",
    "worker_info": "pddm_tf.training.distributed",
}

__all__ = [
    "BackupAndRestore",
    "LearningCheck",
    "NothingLearnedError",
    "SamplerPosition",
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
