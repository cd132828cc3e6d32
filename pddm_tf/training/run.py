"""`train(config)`: one training run of a `TrainConfig`, as `pddm-tf train` runs it.

Loads the data, builds the method's model under the strategy, trains with backups between epochs
(the same config resumes an interrupted run), evaluates held-out retrieval and few-shot
classification, and writes the SavedModel, the `.keras` model and the JSON metrics it asks for.
This module imports TensorFlow; `pddm_tf.training` imports it only when one of its names is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import keras
import numpy as np

from pddm_tf import atomic, backbone, data, evaluation, export
from pddm_tf.backbones import BACKBONES
from pddm_tf.data import image_header, transforms
from pddm_tf.data.loaders import TFDS_NAMES
from pddm_tf.evaluation import few_shot, visualize
from pddm_tf.methods.catalog import METHOD_SPECS
from pddm_tf.methods.pipeline import training_pipeline
from pddm_tf.options import ConfigError
from pddm_tf.training import distributed
from pddm_tf.training.checks import LearningCheck
from pddm_tf.training.config import TrainConfig
from pddm_tf.training.optimizers import make_optimizer
from pddm_tf.training.tensorboard import TensorBoard


def load_split(config: TrainConfig, rotate_training: bool = True):
    """The dataset split of `config` and its channel count; with `rotations` (and `rotate_training`)
    its training classes get their rotated copies as new classes."""
    d = config.resolved().data
    kwargs: dict[str, Any] = {}
    if d.dataset == "omniglot" or d.dataset.startswith("folder:"):
        kwargs.update(split_by=d.split_by, test_groups=list(d.test_groups) if d.test_groups else None)
    if d.dataset != "omniglot" and d.images.channels is not None:
        kwargs.update(channels=d.images.channels)
    if d.dataset in TFDS_NAMES:
        kwargs.update(data_dir=d.tfds.data_dir, cache_dir=d.tfds.cache_dir, download=d.tfds.download,
                      manual_dir=d.tfds.manual_dir)
    split = data.load_dataset(d.dataset, test_fraction=d.test_fraction, seed=config.run.seed, **kwargs)
    if d.images.rotations and rotate_training:
        split = dataclasses.replace(split, train=data.with_rotations(split.train))
    return split, d.images.channels or split.channels


def training_transform(config: TrainConfig):
    """The training augmentation: `augment` (crop + flip), `affine`, or none."""
    d = config.resolved().data
    if d.images.augment and d.images.affine:
        raise ValueError("augment and affine are two different training augmentations; choose one")
    if d.images.augment:
        return transforms.train_transform(d.images.size)
    return transforms.affine_transform(d.images.size) if d.images.affine else None


def few_shot_metrics(config: TrainConfig, embeddings, files, say: Callable[..., None] = print) -> dict[str, float]:
    """The `episodes` few-shot accuracies of held-out `files`; a setting the classes cannot fill (fewer
    than N classes in every group) is skipped with a note."""
    metrics: dict[str, float] = {}
    for setting in config.run.evaluation.episodes or ():
        try:
            metrics.update(few_shot.evaluate_few_shot(embeddings, files, (setting,), config.run.evaluation.num_episodes,
                                                      config.run.seed))
        except few_shot.ImpossibleSettingError as error:
            say(f"few-shot {setting} skipped: {error}")
    return metrics


def report(metrics: dict[str, float], header: str, json_path: str | None) -> None:
    """Prints the metrics as a table and, with `json_path`, writes them there atomically."""
    print(f"\n{header}\n{evaluation.format_table(metrics)}", flush=True)
    if json_path:
        atomic.write_json(json_path, metrics, indent=2, sort_keys=True)
        print(f"metrics written to {json_path}")


def method_settings(config: TrainConfig, num_classes: int | None) -> dict[str, Any]:
    """What the method's builder receives: its options and flags (given, else the method's defaults),
    dropout and the number of training classes (`MethodSpec.settings`)."""
    spec = METHOD_SPECS.get(config.method.name)
    return spec.settings(config.method, dropout=config.model.dropout, training_classes=num_classes)


def build_model(config: TrainConfig, channels: int, num_classes: int, total_steps: int | None = None):
    """The compiled model of `config`: `num_classes` training classes (used by HDML), `total_steps` the
    length of the run (for the learning-rate schedule), under `mixed_precision`'s policy."""
    # Layers take the global policy when they are made; it is restored once the model is built and compiled.
    config = config.resolved()
    previous = keras.mixed_precision.global_policy()
    if config.model.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(f"mixed_{config.model.mixed_precision}")
    try:
        return _build_model(config, channels, num_classes, total_steps)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _build_model(config: TrainConfig, channels: int, num_classes: int, total_steps: int | None):
    m, o = config.model, config.optimization
    options = {"width": m.backbone_width} if m.backbone == "small_convnet" else {}
    network = backbone(m.backbone, config.data.images.size, channels,
                       weights=None if m.weights == "none" else m.weights,
                       pooling=m.pooling, freeze_batchnorm=m.freeze_batchnorm, **options)
    spec = METHOD_SPECS.get(config.method.name)
    try:
        model = spec.build(network, m.embedding_dim, method_settings(config, num_classes))
    except Exception as error:  # a builder may be a plugin's, foreign code: one line naming it and its error
        detail = f"{type(error).__name__}: {error}".splitlines()[0]
        raise MethodBuildError(f"--method={spec.name} ({spec.build.__module__}): its builder raised {detail}"
                               ) from error
    model.build((None, config.data.images.size, config.data.images.size, channels))
    total_steps = max(total_steps or 1, 1)
    model.compile(optimizer=make_optimizer(o.learning_rate, o.weight_decay, o.lr_schedule, total_steps,
                                           round(o.warmup_fraction * total_steps), o.ema_momentum,
                                           o.weight_decay_mode),
                  jit_compile=True if o.jit_compile else "auto")
    return model


class TrainingDivergedError(ValueError):
    """The training loss became NaN or infinite: the message says in which epoch and steps, and where the last
    good state is kept."""


class DivergenceCheck(keras.callbacks.Callback):
    """Stops training at the end of the first epoch whose mean loss is not finite, before the backup of that
    epoch is written (place it before `BackupAndRestore`), so the backup keeps the last good epoch.

    Read from the epoch's logs, so no extra host sync per step: the steps are named as a range.
    """

    def __init__(self, steps_per_epoch: int, backup_path: str | None) -> None:
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self.backup_path = backup_path

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(np.mean(keras.ops.convert_to_numpy(loss))):
            return
        first, last = epoch * self.steps_per_epoch + 1, (epoch + 1) * self.steps_per_epoch
        kept = (f"; the last good state (after epoch {epoch}) is kept in {self.backup_path}" if self.backup_path
                and epoch > 0 else "; no good state was backed up (it diverged in the first epoch)")
        raise TrainingDivergedError(f"training diverged: the loss is not finite in epoch {epoch + 1} (steps {first}-"
                                    f"{last}); lower --learning_rate{kept}")


class MethodBuildError(ValueError):
    """A method's builder raised: the message names the method, the builder's module and the error."""


def backup_dir(config: TrainConfig) -> str:
    """`config.run.outputs.backup_dir`, or a folder named by the settings that define the run
    (`TrainConfig.run_key`)."""
    if config.run.outputs.backup_dir:
        return config.run.outputs.backup_dir
    if config.run.distribution.strategy == "multi_worker":
        raise ValueError("a multi_worker run needs a backup_dir on storage every worker sees (or backup=False)")
    return os.path.join(tempfile.gettempdir(), "pddm_tf_backup", config.run_key())


@contextlib.contextmanager
def _output_dir(path: str, chief: bool) -> Iterator[str]:
    """`path` on the chief; elsewhere a temporary folder, deleted after: under a multi-worker strategy
    every worker runs the same saving code (it may take part in collectives), only the chief keeps it."""
    if chief:
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="pddm_tf_worker_")
    try:
        yield os.path.join(scratch, os.path.basename(os.path.normpath(path)) or "out")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def pixel_limit(max_image_pixels: int) -> Iterator[None]:
    """The loaders' image pixel limit (`image_header.MAX_IMAGE_PIXELS`) set for a block, restored after."""
    default = image_header.MAX_IMAGE_PIXELS
    image_header.MAX_IMAGE_PIXELS = max_image_pixels
    try:
        yield
    finally:
        image_header.MAX_IMAGE_PIXELS = default


def tensorboard_callback(config: TrainConfig, files, channels: int, transform, callbacks: list):
    """The TensorBoard callback of `config.run.outputs.log_dir`, reading the RetrievalEvaluation among `callbacks`."""
    assert config.run.outputs.log_dir is not None  # called only with a log_dir
    retrieval = next((c for c in callbacks if isinstance(c, evaluation.RetrievalEvaluation)), None)
    load_images = (visualize.load_file_images(files, config.data.images.size, channels, transform)
                   if files else None)
    return TensorBoard(config.run.outputs.log_dir, retrieval, load_images,
                       class_names=files.class_names if files else None, seed=config.run.seed)


class Trained(NamedTuple):
    """What `fit` returns: the trained model, the data it was trained on and how to read it."""

    model: Any  # pddm_tf.models.EmbeddingModel
    split: Any  # pddm_tf.data.DatasetSplit (training classes with their rotations, if any)
    channels: int
    transform: Any  # the evaluation transform (None: a plain resize)
    chief: bool  # whether this process writes the outputs
    backup: Any  # the BackupAndRestore callback, or None


def train(config: TrainConfig) -> dict[str, float]:
    """Runs `config` (see the module docstring) and returns the held-out metrics (empty without a
    held-out split). Raises `pddm_tf.options.ConfigError` for a refused setting, before any work."""
    _check(config)
    with pixel_limit(config.data.images.max_pixels), atomic.lock_folders(*_locked_folders(config)):
        return _finish(config.resolved(), _fit(config))


def fit(config: TrainConfig) -> Trained:
    """Only the training of `train(config)`: the model trained on the training classes (resumed from
    its backup, as `train`), without evaluation or outputs; for scripts that evaluate in their own
    way (`examples/zero_shot_imagenet.py`). The backup, if any, is kept; delete it once done."""
    _check(config)
    with pixel_limit(config.data.images.max_pixels), atomic.lock_folders(*_locked_folders(config)):
        return _fit(config)


def _check(config: TrainConfig) -> None:
    """`config.check()`, and the backbone's name (known only with TensorFlow's modules), before any work."""
    config.check()
    if config.model.backbone.lower() not in {name.lower() for name in BACKBONES}:
        raise ConfigError(f"--backbone={config.model.backbone}: unknown backbone; expected one of "
                          f"{', '.join(BACKBONES)}")


def _locked_folders(config: TrainConfig) -> list[str]:
    """The folders no other run may write during this one: its backup and export folders (locked by
    worker 0 alone under multi_worker, whose workers share the backup folder)."""
    r = config.run
    if r.distribution.strategy == "multi_worker" and r.distribution.task_index:
        return []
    backup = backup_dir(config) if r.outputs.backup and config.optimization.epochs > 0 else None
    return [folder for folder in (backup, r.outputs.export_dir) if folder]


def _fit(config: TrainConfig) -> Trained:
    dataset_defaults = config.dataset_defaults()
    config = config.resolved()
    r, o = config.run, config.optimization
    # A multi-worker strategy must exist before any other TensorFlow operation runs.
    dist = r.distribution
    strategy = distributed.make_strategy(dist.strategy, list(dist.worker_hosts or []) or None, dist.task_index,
                                         dist.communication)
    chief = distributed.is_chief(strategy)
    keras.utils.set_random_seed(r.seed)
    split, channels = load_split(config)
    say = print if chief else (lambda *args, **kwargs: None)
    say(f"dataset {config.data.dataset}: {split.train.num_classes} training classes ({len(split.train)} images)"
        + (f", {split.test.num_classes} held-out classes ({len(split.test)} images)" if split.test else ""))
    if dataset_defaults:
        say(f"{config.data.dataset}'s defaults: " + ", ".join(f"--{flag}={value}" for flag, value in
                                                               dataset_defaults.items()))
    if strategy.num_replicas_in_sync > 1:
        index, workers = distributed.worker_info(strategy)
        say(f"strategy {dist.strategy}: {strategy.num_replicas_in_sync} replicas on {workers} worker(s); "
            f"this is worker {index}")
    classes = o.batch.classes
    assert classes is not None  # resolved above
    batch = classes * o.batch.per_class
    steps_per_epoch = o.steps_per_epoch or -(-len(split.train) // batch)
    with strategy.scope():
        model = build_model(config, channels, split.train.num_classes, total_steps=o.epochs * steps_per_epoch)
    transform = transforms.eval_transform(config.data.images.size) if config.data.images.augment else None
    backup = None
    if o.epochs > 0:
        backup_path = backup_dir(config) if r.outputs.backup else None
        settings = method_settings(config, split.train.num_classes)
        # The backup is kept when fit completes, and deleted only once every output is written.
        train_data, callbacks = training_pipeline(
            model, split.train, classes, o.batch.per_class, config.data.images.size, channels, seed=r.seed,
            recluster_every=settings.get("recluster_every", 2), conquer_epochs=settings.get("conquer_epochs", 1),
            cluster_on=settings.get("cluster_on", "features"), small_classes=config.data.small_classes,
            augment=training_transform(config), steps_per_epoch=steps_per_epoch, backup_dir=backup_path,
            delete_backup=False)
        callbacks.append(LearningCheck(strict=r.strict))
        if backup_path:
            backup = callbacks[0]
        callbacks.insert(0, DivergenceCheck(steps_per_epoch, backup_path))  # before the backup of a bad epoch
        trained = backup.restore_completed(model) if backup is not None else None
        if trained is not None:
            say(f"training had completed ({trained} epochs, backed up in {backup_path}): no training step, "
                "writing the outputs")
        else:
            if backup_path:
                say(f"backing up to {backup_path} between epochs (run the same command again to resume)")
            _fit_epochs(config, model, split, channels, transform, train_data, callbacks, steps_per_epoch, chief,
                        backup, say)
    return Trained(model, split, channels, transform, chief, backup)


def _fit_epochs(config: TrainConfig, model, split, channels: int, transform, train_data, callbacks: list,
                steps_per_epoch: int, chief: bool, backup, say: Callable[..., None]) -> None:
    """`model.fit` with the evaluation and TensorBoard callbacks `config` asks for, and its speed said."""
    r, o = config.run, config.optimization
    if split.test is not None and (r.evaluation.every > 0 or r.outputs.log_dir):
        evaluation_data = data.evaluation_dataset(split.test, config.data.images.size, channels,
                                                  r.evaluation.batch_size, transform=transform)
        callbacks.append(evaluation.RetrievalEvaluation(evaluation_data, every=r.evaluation.every or o.epochs,
                                                        seed=r.seed))
    if r.outputs.log_dir and chief:
        callbacks.append(tensorboard_callback(config, split.test, channels, transform, callbacks))
    start = time.perf_counter()
    history = model.fit(train_data, epochs=o.epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                        verbose=0 if not chief else 1 if sys.stdout.isatty() and r.progress else 2)
    seconds = max(time.perf_counter() - start, 1e-9)
    # Only what this run trained: a resumed run starts after the backed-up epochs.
    epochs_run = len(history.epoch)
    images = epochs_run * steps_per_epoch * (o.batch.classes or 0) * o.batch.per_class
    resumed = backup.restored_epoch if backup is not None else None
    say(f"trained {epochs_run} epoch{'' if epochs_run == 1 else 's'} in {seconds:.1f} s "
        f"({images / seconds:.0f} images/s)"
        + (f", resumed after epoch {resumed} ({o.epochs} epochs in all)" if resumed else ""))


def _finish(config: TrainConfig, trained: Trained) -> dict[str, float]:
    """The evaluation and outputs of `train` after `fit`; the backup is deleted once all are written."""
    model, split, channels, transform, chief, backup = trained
    r = config.run
    say = print if chief else (lambda *args, **kwargs: None)
    metrics: dict[str, float] = {}
    if split.test is not None:
        # Sharded over every replica of every worker, gathered on all of them.
        embeddings = distributed.embed_files(model, split.test, config.data.images.size, channels,
                                             r.evaluation.batch_size, transform=transform)
        labels = split.test.labels
        rerank = config.method.rerank or 0
        metrics = evaluation.evaluate_retrieval(embeddings, labels, seed=r.seed, rerank=rerank,
                                                pair_scores=lambda a, b: model.pddm((a, b)).numpy())
        metrics.update(few_shot_metrics(config, embeddings, split.test, say))
        if chief:
            report(metrics, f"held-out retrieval ({split.test.num_classes} unseen classes, {len(labels)} images)",
                   r.evaluation.json)
            if r.outputs.log_dir and config.optimization.epochs == 0:  # no fit, no TensorBoard callback: the projector
                tensorboard_callback(config, split.test, channels, transform, []).write_projector_of(embeddings,
                                                                                                    labels)
    if r.outputs.export_dir:
        with _output_dir(r.outputs.export_dir, chief) as export_dir:
            path = export.export_saved_model(model, export_dir, config.data.images.size, channels, transform=transform,
                                             max_image_pixels=config.data.images.max_pixels)
        say(f"SavedModel exported to {path}")
    if r.outputs.save_model:
        with _output_dir(r.outputs.save_model, chief) as save_path:
            path = export.save_keras_model(model, save_path)
        say(f"Keras model saved to {path}")
    if backup is not None and chief:
        # Every output is written: only now may the trained state go.
        shutil.rmtree(backup.backup_dir, ignore_errors=True)
    return metrics
