"""`TrainConfig`: everything one training run is made of, as a value, grouped by concern.

    data          DataConfig           what to train and evaluate on: .tfds (TFDSConfig: its files),
                                       .images (ImageConfig: size, decoding, augmentation)
    model         ModelConfig          the backbone and the embedding
    method        MethodConfig         the training method, its own options and the method flags:
                                       .pddm (PDDMConfig), .hdml (HDMLConfig), .dc (DivideAndConquerConfig)
    optimization  OptimizationConfig   steps, .batch (BatchConfig: P x K), learning rate, weight decay
    run           RunConfig            seed, .evaluation (EvaluationConfig), .outputs (OutputConfig: exports,
                                       logs, backups), .distribution (DistributionConfig)

No group or sub-group has more than ten fields (issue 30: no constructor of more than about ten
parameters). Every setting is the `pddm-tf train` flag named as its field, or as its
`metadata["flag"]` (`MethodConfig.name` is `--method`, `HDMLConfig.alpha` `--hdml_alpha`,
`ImageConfig.size` `--image_size`; `FLAGS` maps each flag to its place). The command line makes one
flag per setting from its `pddm_tf.options.Setting` (type, default, help, bound), so the bounds live
here and nowhere else. The flat fields of the previous release (`RunConfig(json=...)`,
`config.run.json`, `DataConfig(data_dir=...)`) still work for one release, with a DeprecationWarning.
A config is parsed and checked once, where it is made: `TrainConfig.from_flags(...)` (flat flag
names, as the command line and recipes give them) or the nested constructor, then `check()`
(which `train` calls) refuses, in one line, what the command line refuses.

    >>> config = TrainConfig.from_flags(epochs=2, steps_per_epoch=5, method="triplet_batchhard")
    >>> config.method.name, config.optimization.epochs, config.data.images.size
    ('triplet_batchhard', 2, 32)

No TensorFlow import here (the command line's `--help` reads these fields).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pddm_tf._deprecation import warn_deprecated
from pddm_tf._setting_groups import get, grouped, replace_paths, settings_of, spelled, subgroup
from pddm_tf.methods.spec import DivideAndConquerConfig, HDMLConfig, MethodConfig, PDDMConfig
from pddm_tf.options import Bound, ConfigError, Setting, setting
from pddm_tf.training import config_checks, dataset_defaults
from pddm_tf.training.dataset_defaults import DATASET_DEFAULTS

# Upper bounds of sizes, from the memory a larger value takes (issue 34): stated in the refusal.
_IMAGE_SIZE = Bound(1, 4096, note="a 4096 x 4096 x 3 float32 image takes 201 MB; larger sizes exhaust memory")
_PIXELS = Bound(1, 2**28, note="2^28 pixels decode to 805 MB of RGB")
_EMBEDDING = Bound(1, 65536, note="a 2048 x 65536 float32 projection takes 537 MB")
_WIDTH = Bound(1, 4096, note="a 3 x 3 convolution of 4096 filters takes 604 MB")
_BATCH = Bound(1, 65536, note="one batch of 65536 224 x 224 RGB images takes 39 GB")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TFDSConfig:
    """Where a tensorflow-datasets dataset's files are, and whether to download them."""

    data_dir: str | None = setting(None, "TFDS datasets: the tensorflow-datasets data directory.", str)
    cache_dir: str | None = setting(None, "TFDS datasets: where the extracted image files go (default under "
                                    "data_dir).", str)
    download: bool = setting(False, "TFDS datasets: download and prepare the data if it is not there yet.")
    manual_dir: str | None = setting(None, "TFDS datasets: directory with manually downloaded files (Cars196, "
                                     "ImageNet).", str)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """How images are decoded and resized, and how training images are augmented."""

    size: int = setting(32, "Images are resized to image_size x image_size.", bound=_IMAGE_SIZE, flag="image_size")
    channels: int | None = setting(None, "Image channels (default: 1 for omniglot, 3 for folders).", int,
                                   bound=Bound(choices=(1, 3)))
    max_pixels: int = setting(16_000_000, "Images whose header declares more pixels (width x height) are refused "
                              "before decoding: skipped by folder checks, an error in the training and evaluation "
                              "pipelines, and an InvalidArgumentError from the exported SavedModel.", bound=_PIXELS,
                              flag="max_image_pixels")
    rotations: bool | None = setting(None, "Add 90/180/270-degree rotations of the training classes as new classes "
                                     "(any dataset; held-out classes stay upright). Default: on for omniglot and "
                                     "tfds_omniglot, off otherwise.", bool)
    augment: bool = setting(False, "The papers' pipeline: random resized crop + horizontal flip for training, "
                            "resize (image_size * 8/7) + centre crop for evaluation. Off: plain resize.")
    affine: bool | None = setting(None, "Small random affine distortions of training images (rotation, shear, "
                                  "scale, shift; Koch et al. 2015), for characters and drawings; no flip. Default: on "
                                  "for omniglot and tfds_omniglot (unless --augment), off otherwise.", bool)


@grouped("config.data")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What a run trains and evaluates on (the dataset, its `tfds` files, the held-out classes, small
    classes) and how its `images` are read."""

    dataset: str = setting("omniglot", "Dataset: 'omniglot' (embedded), 'folder:PATH', or through "
                           "tensorflow-datasets: cub200, cars196, sop, tfds_omniglot, imagenet2012.")
    tfds: TFDSConfig = subgroup(TFDSConfig)
    test_fraction: float = setting(0.5, "Fraction of classes held out for testing (0 = train on all).",
                                   bound=Bound(0, 1, high_open=True, note="0 = train on every class"))
    split_by: str = setting("character", "Split unit: single classes, or whole alphabets (Omniglot) / top-level "
                            "folders (folder:PATH), so no group is on both sides.", choices=("character", "alphabet"))
    test_groups: tuple[str, ...] | None = setting(None, "Hold out these alphabets / top-level folders (e.g. "
                                                  "Greek,Latin); overrides --test_fraction and --split_by.", tuple)
    small_classes: str = setting("error", "Classes with fewer than batch_per_class images: refuse them, or cycle "
                                 "their images (SOP).", choices=("error", "cycle"))
    images: ImageConfig = subgroup(ImageConfig)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The network: backbone, pooling, embedding, precision."""

    backbone: str = setting("small_convnet", "Backbone: small_convnet or a keras.applications network (ResNet50, "
                            "InceptionV3, EfficientNetV2B0, ConvNeXtTiny, MobileNetV3Small, ...).")
    weights: str = setting("none", "Backbone initialisation (imagenet: downloaded by Keras).",
                           choices=("none", "imagenet"))
    pooling: str = setting("avg", "Global pooling of the backbone's feature map.", choices=("avg", "max", "gem"))
    backbone_width: int = setting(64, "Filters per block of the small convolutional backbone.", bound=_WIDTH)
    freeze_batchnorm: bool = setting(False, "Keep the backbone's BatchNorm statistics (and gamma, beta) fixed.")
    embedding_dim: int = setting(64, "Embedding size d.", bound=_EMBEDDING)
    dropout: float = setting(0.0, "Dropout before the embedding projection.", bound=Bound(0, 1, high_open=True))
    mixed_precision: str = setting("none", "Mixed precision: the network computes in float16 (GPUs; with loss "
                                   "scaling) or bfloat16 (TPUs, recent GPUs and CPUs); variables, embedding, losses "
                                   "and PDDM scores stay float32. HDML and Divide-and-Conquer take bfloat16 only.",
                                   choices=("none", "float16", "bfloat16"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """The composition of a training batch: P classes of K images each."""

    classes: int | None = setting(None, "P: classes per batch. Default: 32 for omniglot and tfds_omniglot, 16 "
                                  "otherwise.", int, bound=Bound(2, 65536, note="a batch needs two classes for a "
                                                                 "negative"), flag="batch_classes")
    per_class: int = setting(4, "K: images per class in a batch.", bound=Bound(
        2, 65536, note="a class needs two images in a batch for a positive pair"), flag="batch_per_class")


@grouped("config.optimization")
@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizationConfig:
    """How long and how the model is trained: steps, the `batch`, the learning rate and weight decay."""

    epochs: int = setting(10, "Training epochs (0 = evaluate and export the untrained model).",
                          bound=Bound(0, 1_000_000, note="0 = evaluate and export the untrained model"))
    steps_per_epoch: int = setting(100, "Gradient steps per epoch (0 = one pass over the training images).",
                                   bound=Bound(0, 10**9, note="0 = one pass over the training images"))
    batch: BatchConfig = subgroup(BatchConfig)
    # A 2% warm-up into a cosine decay from 2e-3: what the omniglot recipe found that costs nothing, measured at
    # the main job's 1,000 steps (BENCHMARKS.md section 1). No weight decay: the decoupled 1e-4 it had was a no-op
    # (x0.9999 over 1,000 steps at lr 2e-3; issue 31).
    learning_rate: float = setting(2e-3, "Adam learning rate (the peak of a schedule).",
                                   bound=Bound(0, 10, low_open=True, note="larger rates diverge"))
    weight_decay: float = setting(0.0, "Weight decay coefficient (see --weight_decay_mode); 0 = plain Adam.",
                                  bound=Bound(0, 1, note="0 = plain Adam"))
    weight_decay_mode: str = setting("decoupled", "decoupled: AdamW, every weight shrinks by (1 - lr * weight_decay) "
                                     "per step; l2: the papers' L2 term coupled to the gradient (weight_decay * w "
                                     "added to each kernel's gradient; not biases, not batch-norm).",
                                     choices=("decoupled", "l2"))
    lr_schedule: str = setting("cosine", "Learning-rate schedule over the whole run.", choices=("constant", "cosine"))
    warmup_fraction: float = setting(0.02, "Fraction of the steps with a linear learning-rate warm-up.",
                                     bound=Bound(0, 1, high_open=True, note="0 = no warm-up"))
    ema_momentum: float = setting(0.0, "Keep an exponential moving average of the weights with this momentum (e.g. "
                                  "0.99) and end training with it; 0 = off.",
                                  bound=Bound(0, 1, high_open=True, note="0 = no weight average"))
    jit_compile: bool = setting(False, "XLA: the whole train step for the methods whose step compiles, and PDDM's "
                                "all-pairs mining scores for the PDDM methods. Off: Keras' 'auto'.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """The held-out evaluation: retrieval during and after training, few-shot episodes, the metrics file."""

    json: str | None = setting(None, "Write the final held-out metrics to this JSON file.", str)
    batch_size: int = setting(256, "Batch size for embedding the evaluation images.", bound=_BATCH,
                              flag="eval_batch_size")
    episodes: tuple[str, ...] = setting(("20way1shot", "5way1shot", "20way5shot"), "Few-shot settings <N>way<K>shot "
                                        "evaluated on the held-out classes; empty to skip.", tuple)
    num_episodes: int = setting(400, "Episodes per few-shot setting.", bound=Bound(1, 1_000_000))
    every: int = setting(0, "Evaluate held-out retrieval every N epochs during training (0 = off).",
                         bound=Bound(0, note="0 = off"), flag="eval_every")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """What a run writes: the SavedModel, the .keras model, TensorBoard logs, and its backups."""

    export_dir: str | None = setting(None, "Export a TF Serving SavedModel under this directory (<dir>/<version>/).",
                                     str)
    save_model: str | None = setting(None, "train: also save the trained Keras model to this .keras file "
                                     "(atomically), the input of `pddm-tf export`.", str)
    log_dir: str | None = setting(None, "train: write TensorBoard logs here.", str)
    backup: bool = setting(True, "Fault tolerance: back up the whole training state between epochs and resume from "
                           "it when the same command is run again.")
    backup_dir: str | None = setting(None, "Where the backups go (deleted once every output is written). Default: a "
                                     "folder under the system temp dir named by a hash of the flags.", str)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributionConfig:
    """Where a run trains: one device, every local device, or one worker of a cluster."""

    strategy: str = setting("default", "default: one device; mirrored: every local device; multi_worker: one worker "
                            "of a cluster (MultiWorkerMirroredStrategy).", choices=("default", "mirrored",
                                                                                    "multi_worker"))
    worker_hosts: tuple[str, ...] | None = setting(None, "multi_worker: host:port of every worker (sets TF_CONFIG).",
                                                   tuple)
    task_index: int = setting(0, "multi_worker with --worker_hosts: this worker's index in the list (0 = chief).",
                              bound=Bound(0, 65535))
    communication: str = setting("auto", "multi_worker: collective implementation.", choices=("auto", "ring", "nccl"))


@grouped("config.run")
@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Seed, `evaluation`, `outputs` (and fault tolerance), `distribution` of a run."""

    seed: int = setting(0, "Seed for the class split, sampling and initialisation.", bound=Bound(0, 2**32 - 1))
    evaluation: EvaluationConfig = subgroup(EvaluationConfig)
    outputs: OutputConfig = subgroup(OutputConfig)
    strict: bool = setting(False, "Fail, rather than warn, after an epoch that learned nothing.")
    progress: bool = setting(True, "Progress bars for long steps, drawn only when the output is a terminal.")
    distribution: DistributionConfig = subgroup(DistributionConfig)


#: Settings that do not change what a run trains: they do not name its backup folder.
_NOT_DEFINING = frozenset({"backup_dir", "task_index", "json", "strict", "progress", "log_dir", "export_dir",
                           "save_model", "eval_every", "episodes", "num_episodes", "rerank", "eval_batch_size",
                           "jit_compile"})

#: Group name -> its class, in order.
GROUPS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig,
                           "optimization": OptimizationConfig, "run": RunConfig}


#: flag name -> (group, path, Setting): every setting of every group and sub-group, by its `pddm-tf train`
#: flag; `path` is dotted inside the group (`FLAGS["json"]` is `("run", "evaluation.json", ...)`).
FLAGS: dict[str, tuple[str, str, Setting]] = {flag: (group, path, spec) for group, cls in GROUPS.items()
                                              for flag, path, spec in settings_of(cls)}


def parse_loss_options(text: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """--loss_options: a JSON object (or a mapping already) -> a dict; None if unset. Its keys and values are
    checked against the method's options by `MethodSpec.parse_options`."""
    if text is None or text == "":
        return None
    if isinstance(text, Mapping):
        return dict(text)
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--loss_options={text}: not JSON ({error.msg}); expected an object such as "
                          "'{\"margin\": 0.3}'") from None
    if not isinstance(options, dict):
        raise ConfigError(f"--loss_options={text}: expected a JSON object such as '{{\"margin\": 0.3}}'")
    return options


def _parse(flag: str, value: Any) -> Any:
    if flag == "loss_options":
        return parse_loss_options(value)
    if isinstance(value, list):
        value = tuple(value)
    return FLAGS[flag][2].parse(f"--{flag}", value)


def _groups_of(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Group -> {dotted path: parsed value} of flag values."""
    unknown = sorted(set(flat) - set(FLAGS))
    if unknown:
        raise ConfigError(f"TrainConfig has no setting {', '.join(map(repr, unknown))}; its settings are "
                          f"{', '.join(FLAGS)}")
    groups: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    for flag, value in flat.items():
        group, path, _ = FLAGS[flag]
        groups[group][path] = _parse(flag, value)
    return groups


def _nested_spelling(flat: Mapping[str, Any]) -> str:
    """`group=GroupConfig(field=..., sub=SubConfig(field=...))` for the flat names, one group each."""
    paths: dict[str, list[str]] = {}
    for flag in flat:
        if flag in FLAGS:
            paths.setdefault(FLAGS[flag][0], []).append(FLAGS[flag][1])
    return ", ".join(f"{group}={GROUPS[group].__name__}({spelled(GROUPS[group], names)})"
                     for group, names in paths.items())


@dataclasses.dataclass(frozen=True, init=False)
class TrainConfig:
    """One training run: `data`, `model`, `method`, `optimization`, `run` (see the module docstring).

    Build one with `from_flags(epochs=3, method=NAME)` (flag names) or nested
    (`TrainConfig(optimization=OptimizationConfig(epochs=3))`); change one with `with_flags` or
    `replace(group=...)`; start from a recipe with `get_recipe(name).config(...)`; `check()` refuses what
    `pddm-tf train` refuses. The flat spellings of the previous release (`TrainConfig(epochs=3)`,
    `config.epochs`, `config.replace(epochs=3)`) still work, with a DeprecationWarning naming the new one.
    """

    data: DataConfig
    model: ModelConfig
    method: MethodConfig
    optimization: OptimizationConfig
    run: RunConfig

    def __init__(self, *, data: DataConfig | None = None, model: ModelConfig | None = None,
                 method: MethodConfig | str | None = None, optimization: OptimizationConfig | None = None,
                 run: RunConfig | None = None, **flat: Any) -> None:
        if isinstance(method, str):  # the flat `method=NAME` of the previous release
            flat["method"] = method
            method = None
        if flat:
            warn_deprecated(f"TrainConfig({', '.join(f'{name}=...' for name in flat)}) is deprecated: use "
                            f"TrainConfig.from_flags({', '.join(f'{name}=...' for name in flat)}) or "
                            f"TrainConfig({_nested_spelling(flat)})", stacklevel=2)
        given = {"data": data, "model": model, "method": method, "optimization": optimization, "run": run}
        for group, values in _groups_of(flat).items():
            base = given[group] if given[group] is not None else GROUPS[group]()
            object.__setattr__(self, group, replace_paths(base, values))

    @classmethod
    def from_flags(cls, values: Mapping[str, Any] | None = None, **flags: Any) -> TrainConfig:
        """The config of `pddm-tf train` flag values (name -> value; unset names keep their defaults), each
        parsed and checked against its field's type and bound: `ConfigError` names a refused one."""
        flat = {**dict(values or {}), **flags}
        config = cls()
        return config.with_flags(**flat) if flat else config

    def with_flags(self, **flags: Any) -> TrainConfig:
        """A copy with these flag values changed (parsed as in `from_flags`)."""
        groups = {group: getattr(self, group) for group in GROUPS}
        for group, values in _groups_of(flags).items():
            if values:
                groups[group] = replace_paths(groups[group], values)
        return dataclasses.replace(self, **groups)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with whole groups replaced (`replace(run=RunConfig(seed=3))`). Flag names are the previous
        release's spelling (DeprecationWarning: use `with_flags`)."""
        flat = {name: value for name, value in changes.items() if name not in GROUPS or isinstance(value, str)}
        if flat:
            warn_deprecated(f"TrainConfig.replace({', '.join(f'{name}=...' for name in flat)}) is deprecated: use "
                            f"with_flags({', '.join(f'{name}=...' for name in flat)})", stacklevel=2)
        groups = {name: value for name, value in changes.items() if name not in flat}
        return dataclasses.replace(self, **groups).with_flags(**flat)

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not attributes: the flat fields of the previous release.
        if name in FLAGS and not name.startswith("_"):
            group, path, _ = FLAGS[name]
            warn_deprecated(f"TrainConfig.{name} is deprecated: use config.{group}.{path}", stacklevel=2)
            return get(object.__getattribute__(self, group), path)
        raise AttributeError(f"TrainConfig has no attribute {name!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every setting's flag name (`pddm-tf train`'s flags that shape a run)."""
        return tuple(FLAGS)

    def flag_values(self) -> dict[str, Any]:
        """The config as flag name -> value: tuples as lists, --loss_options as JSON."""
        values: dict[str, Any] = {}
        for flag, (group, path, _) in FLAGS.items():
            value = get(getattr(self, group), path)
            values[flag] = list(value) if isinstance(value, tuple) else value
        options = self.method.options
        values["loss_options"] = json.dumps(dict(options), sort_keys=True) if options else None
        return values

    def dataset_defaults(self) -> dict[str, Any]:
        """The values `resolved` gives the settings left unset (None) of `DATASET_DEFAULTS`, by flag name."""
        unset = [flag for flag in DATASET_DEFAULTS if get(getattr(self, FLAGS[flag][0]), FLAGS[flag][1]) is None]
        return dataset_defaults.defaults_for(self.data.dataset, unset, augment=self.data.images.augment)

    def resolved(self) -> TrainConfig:
        """A copy whose dataset-dependent settings (`DATASET_DEFAULTS`) hold their value for this dataset
        where they are unset; what `train`, `fit` and `build_model` run. Set values are kept."""
        values = self.dataset_defaults()
        return self.with_flags(**values) if values else self

    def run_key(self) -> str:
        """A digest of the settings that define what the run trains (not its outputs or evaluation), resolved
        for the dataset: the name of its default backup folder, so that the same command finds its backup
        again."""
        defining = sorted(f"{name}={value!r}" for name, value in self.resolved().flag_values().items()
                          if name not in _NOT_DEFINING)
        return hashlib.sha1("\n".join(defining).encode()).hexdigest()[:16]

    def check(self) -> None:
        """Raises `ConfigError` (one line) naming the first value or combination `pddm-tf train` refuses;
        train() calls it before any work."""
        config_checks.check_config(self.resolved(), FLAGS)


__all__ = ["BatchConfig", "ConfigError", "DATASET_DEFAULTS", "DataConfig", "DistributionConfig",
           "DivideAndConquerConfig", "EvaluationConfig", "GROUPS", "HDMLConfig", "ImageConfig", "MethodConfig",
           "ModelConfig", "OptimizationConfig", "OutputConfig", "PDDMConfig", "RunConfig", "TFDSConfig",
           "TrainConfig", "parse_loss_options"]
