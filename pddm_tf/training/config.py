"""`TrainConfig`: everything one training run is made of, as a value (no TensorFlow import here).

`pddm-tf train` builds one from its flags (whose defaults are this class's), recipes are
`TrainConfig`s (`pddm_tf.methods.recipes`), and `pddm_tf.training.train(config)` runs one from Python:

    >>> config = TrainConfig(epochs=2, steps_per_epoch=5).replace(method="triplet_batchhard")
    >>> config.method, config.epochs, config.image_size
    ('triplet_batchhard', 2, 32)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pddm_tf.cli import validation


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run: data, model, method, optimisation, outputs and distribution.

    Every field is the `pddm-tf train` flag of the same name (`pddm-tf train --helpfull` says what
    each does), with the same default; `loss_options` is the parsed JSON object of
    `--loss_options`, and `log_dir` is None unless given. Build one with keywords, change one with
    `replace`, start from a recipe with `pddm_tf.methods.recipes.get_recipe(name).config(...)`, and check
    one with `check` (`train` does).
    """

    # data
    dataset: str = "omniglot"
    data_dir: str | None = None
    cache_dir: str | None = None
    download: bool = False
    manual_dir: str | None = None
    test_fraction: float = 0.5
    split_by: str = "character"
    test_groups: tuple[str, ...] | None = None
    rotations: bool = False
    seed: int = 0
    image_size: int = 32
    augment: bool = False
    affine: bool = False
    small_classes: str = "error"
    channels: int | None = None
    max_image_pixels: int = 16_000_000
    # evaluation
    json: str | None = None
    eval_batch_size: int = 256
    episodes: tuple[str, ...] = ("20way1shot", "5way1shot", "20way5shot")
    num_episodes: int = 400
    rerank: int = 0
    eval_every: int = 0
    # model and method
    method: str = "pddm_quadruplet"
    mining: str = "per_pair"
    mining_score: str | None = None
    pddm_normalize_inputs: bool = False
    embedding_dim: int = 64
    backbone: str = "small_convnet"
    weights: str = "none"
    pooling: str = "avg"
    mixed_precision: str = "none"
    freeze_batchnorm: bool = False
    dropout: float = 0.0
    backbone_width: int = 64
    loss_options: Mapping[str, Any] | None = None
    alpha: float = 1.0
    beta: float = 0.5
    embedding_weight: float = 0.5
    hdml_alpha: float | None = None
    hdml_generator_input: str = "single"
    hdml_beta: float = 1e4
    hdml_synthetic: bool = True
    num_learners: int = 4
    recluster_every: int = 2
    conquer_epochs: int = 1
    cluster_on: str = "features"
    # optimisation
    epochs: int = 10
    steps_per_epoch: int = 100
    batch_classes: int = 16
    batch_per_class: int = 4
    # A 2% warm-up into a cosine decay from 2e-3: what the omniglot recipe found that costs nothing,
    # measured at the main job's 1,000 steps (BENCHMARKS.md section 1). No weight decay: the AdamW 1e-4
    # that came with it multiplies a weight by 0.9999 over the run, and measured as a no-op (issue 31).
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    weight_decay_mode: str = "decoupled"
    lr_schedule: str = "cosine"
    warmup_fraction: float = 0.02
    ema_momentum: float = 0.0
    jit_compile: bool = False
    # outputs and fault tolerance
    export_dir: str | None = None
    save_model: str | None = None
    log_dir: str | None = None
    backup: bool = True
    backup_dir: str | None = None
    strict: bool = False
    progress: bool = True
    # distribution
    strategy: str = "default"
    worker_hosts: tuple[str, ...] | None = None
    task_index: int = 0
    communication: str = "auto"

    def __post_init__(self) -> None:
        # Lists from flags or callers become tuples, so that a config stays an immutable value.
        for name in ("test_groups", "episodes", "worker_hosts"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.loss_options, str):  # the --loss_options JSON
            object.__setattr__(self, "loss_options", validation.parse_loss_options(self.loss_options or None))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes`; an unknown name is refused with the known ones."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ValueError(f"TrainConfig has no field {', '.join(map(repr, unknown))}; its fields are "
                             f"{', '.join(self.field_names())}")
        return dataclasses.replace(self, **changes)

    def flag_values(self) -> dict[str, Any]:
        """The config as `pddm-tf train` flag values: lists for tuples, --loss_options as JSON."""
        values = {name: getattr(self, name) for name in self.field_names()}
        for name in ("test_groups", "episodes", "worker_hosts"):
            if values[name] is not None:
                values[name] = list(values[name])
        values["loss_options"] = json.dumps(dict(self.loss_options)) if self.loss_options else None
        return values

    def check(self) -> None:
        """Raises `pddm_tf.cli.validation.FlagError` naming the first value `pddm-tf train` would refuse."""
        validation.check_flags("train", self.flag_values())
        if self.loss_options:
            validation.parse_loss_options(json.dumps(dict(self.loss_options)))
