"""`train(config)`: one training run of a `TrainConfig`, as `pddm-tf train` runs it.

Loads the data, builds the method's model under the strategy, trains with backups between epochs
(the same config resumes an interrupted run), evaluates held-out retrieval and few-shot
classification, and writes the SavedModel, the `.keras` model and the JSON metrics it asks for.
TensorFlow is imported when a function runs, not with this module (`pddm-tf --help` stays fast).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from pddm_tf import atomic
from pddm_tf.training.config import TrainConfig

#: The run in progress: its backup folder and length, and whether training completed; the CLI's
#: message after Ctrl-C or an error reads it.
CURRENT_RUN: dict[str, Any] = {}
#: Fields that do not change what a run trains: they do not name its backup folder.
_NOT_DEFINING = frozenset({"backup_dir", "task_index", "json", "strict", "progress", "log_dir", "export_dir",
                           "save_model", "eval_every", "episodes", "num_episodes", "rerank", "eval_batch_size",
                           "jit_compile"})


def load_split(config: TrainConfig, rotate_training: bool = True):
    """The dataset split of `config` and its channel count; with `rotations` (and `rotate_training`)
    its training classes get their rotated copies as new classes."""
    from pddm_tf import data
    from pddm_tf.data.tfds_loaders import TFDS_LOADERS

    kwargs: dict[str, Any] = {}
    if config.dataset == "omniglot" or config.dataset.startswith("folder:"):
        kwargs.update(split_by=config.split_by, test_groups=list(config.test_groups) if config.test_groups else None)
    if config.dataset != "omniglot" and config.channels is not None:
        kwargs.update(channels=config.channels)
    if config.dataset in TFDS_LOADERS:
        kwargs.update(data_dir=config.data_dir, cache_dir=config.cache_dir, download=config.download,
                      manual_dir=config.manual_dir)
    split = data.load_dataset(config.dataset, test_fraction=config.test_fraction, seed=config.seed, **kwargs)
    if config.rotations and rotate_training:
        split = dataclasses.replace(split, train=data.with_rotations(split.train))
    return split, config.channels or split.channels


def training_transform(config: TrainConfig):
    """The training augmentation: `augment` (crop + flip), `affine`, or none."""
    from pddm_tf.data import transforms

    if config.augment and config.affine:
        raise ValueError("augment and affine are two different training augmentations; choose one")
    if config.augment:
        return transforms.train_transform(config.image_size)
    return transforms.affine_transform(config.image_size) if config.affine else None


def few_shot_metrics(config: TrainConfig, embeddings, files, say: Callable[..., None] = print) -> dict[str, float]:
    """The `episodes` few-shot accuracies of held-out `files`; a setting the classes cannot fill (fewer
    than N classes in every group) is skipped with a note."""
    from pddm_tf.evaluation import few_shot

    metrics: dict[str, float] = {}
    for setting in config.episodes or ():
        try:
            metrics.update(few_shot.evaluate_few_shot(embeddings, files, (setting,), config.num_episodes, config.seed))
        except few_shot.ImpossibleSettingError as error:
            say(f"few-shot {setting} skipped: {error}")
    return metrics


def report(metrics: dict[str, float], header: str, json_path: str | None) -> None:
    """Prints the metrics as a table and, with `json_path`, writes them there atomically."""
    from pddm_tf.evaluation import format_table

    print(f"\n{header}\n{format_table(metrics)}", flush=True)
    if json_path:
        atomic.write_json(json_path, metrics, indent=2, sort_keys=True)
        print(f"metrics written to {json_path}")


def build_model(config: TrainConfig, channels: int, num_classes: int, total_steps: int | None = None):
    """The compiled model of `config`: `num_classes` training classes (used by HDML), `total_steps` the
    length of the run (for the learning-rate schedule), under `mixed_precision`'s policy."""
    import keras

    options = {"width": config.backbone_width} if config.backbone == "small_convnet" else {}
    # Layers take the global policy when they are made; it is restored once the model is built and compiled.
    previous = keras.mixed_precision.global_policy()
    if config.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(f"mixed_{config.mixed_precision}")
    try:
        return _build_model(config, channels, num_classes, total_steps, options)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def method_settings(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """Every method option of `config`; `methods.method_options` keeps those of its method."""
    return dict(alpha=config.alpha, beta=config.beta, embedding_weight=config.embedding_weight, mining=config.mining,
                mining_score=config.mining_score, num_classes=num_classes,
                pddm_normalize_inputs=config.pddm_normalize_inputs, num_learners=config.num_learners,
                dropout=config.dropout, hdml_alpha=config.hdml_alpha, hdml_beta=config.hdml_beta,
                hdml_generator_input=config.hdml_generator_input, hdml_synthetic=config.hdml_synthetic,
                loss_options=dict(config.loss_options) if config.loss_options else None)


def _build_model(config: TrainConfig, channels: int, num_classes: int, total_steps: int | None,
                 options: dict[str, Any]):
    from pddm_tf import backbone
    from pddm_tf.methods import build_model as build_method_model
    from pddm_tf.methods import method_options
    from pddm_tf.training.optimizers import make_optimizer

    network = backbone(config.backbone, config.image_size, channels,
                       weights=None if config.weights == "none" else config.weights,
                       pooling=config.pooling, freeze_batchnorm=config.freeze_batchnorm, **options)
    model = build_method_model(config.method, network, config.embedding_dim,
                               **method_options(config.method, **method_settings(config, num_classes)))
    model.build((None, config.image_size, config.image_size, channels))
    total_steps = max(total_steps or 1, 1)
    model.compile(optimizer=make_optimizer(config.learning_rate, config.weight_decay, config.lr_schedule,
                                           total_steps, round(config.warmup_fraction * total_steps),
                                           config.ema_momentum),
                  jit_compile=True if config.jit_compile else "auto")
    return model


def backup_dir(config: TrainConfig) -> str:
    """`config.backup_dir`, or a folder named by the fields that define the run (the same config finds it again)."""
    if config.backup_dir:
        return config.backup_dir
    if config.strategy == "multi_worker":
        raise ValueError("a multi_worker run needs a backup_dir on storage every worker sees (or backup=False)")
    defining = sorted(f"{name}={value!r}" for name, value in config.flag_values().items() if name not in _NOT_DEFINING)
    digest = hashlib.sha1("\n".join(defining).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "pddm_tf_backup", digest)


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
    from pddm_tf.data import image_header

    default = image_header.MAX_IMAGE_PIXELS
    image_header.MAX_IMAGE_PIXELS = max_image_pixels
    try:
        yield
    finally:
        image_header.MAX_IMAGE_PIXELS = default


def tensorboard_callback(config: TrainConfig, files, channels: int, transform, callbacks: list):
    """The TensorBoard callback of `config.log_dir`, reading the RetrievalEvaluation among `callbacks`."""
    from pddm_tf import evaluation
    from pddm_tf.evaluation import visualize
    from pddm_tf.training.tensorboard import TensorBoard

    assert config.log_dir is not None  # called only with a log_dir
    retrieval = next((c for c in callbacks if isinstance(c, evaluation.RetrievalEvaluation)), None)
    load_images = visualize.load_file_images(files, config.image_size, channels, transform) if files else None
    return TensorBoard(config.log_dir, retrieval, load_images, class_names=files.class_names if files else None,
                       seed=config.seed)


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
    held-out split). Raises `pddm_tf.cli.validation.FlagError` for a refused setting, before any work."""
    config.check()
    with pixel_limit(config.max_image_pixels), atomic.lock_folders(*_locked_folders(config)):
        CURRENT_RUN.clear()
        trained = _fit(config)
        return _finish(config, trained)


def fit(config: TrainConfig) -> Trained:
    """Only the training of `train(config)`: the model trained on the training classes (resumed from
    its backup, as `train`), without evaluation or outputs; for scripts that evaluate in their own
    way (`examples/zero_shot_imagenet.py`). The backup, if any, is kept; delete it once done."""
    config.check()
    with pixel_limit(config.max_image_pixels), atomic.lock_folders(*_locked_folders(config)):
        return _fit(config)


def _locked_folders(config: TrainConfig) -> list[str]:
    """The folders no other run may write during this one: its backup and export folders (locked by
    worker 0 alone under multi_worker, whose workers share the backup folder)."""
    if config.strategy == "multi_worker" and config.task_index:
        return []
    backup = backup_dir(config) if config.backup and config.epochs > 0 else None
    return [folder for folder in (backup, config.export_dir) if folder]


def _fit(config: TrainConfig) -> Trained:
    from pddm_tf.training import distributed

    # A multi-worker strategy must exist before any other TensorFlow operation runs.
    strategy = distributed.make_strategy(config.strategy, list(config.worker_hosts or []) or None, config.task_index,
                                         config.communication)
    chief = distributed.is_chief(strategy)

    import keras

    from pddm_tf import data, evaluation
    from pddm_tf.data import transforms
    from pddm_tf.methods import training_pipeline
    from pddm_tf.training.checks import LearningCheck

    keras.utils.set_random_seed(config.seed)
    split, channels = load_split(config)
    say = print if chief else (lambda *args, **kwargs: None)
    say(f"dataset {config.dataset}: {split.train.num_classes} training classes ({len(split.train)} images)"
        + (f", {split.test.num_classes} held-out classes ({len(split.test)} images)" if split.test else ""))
    if strategy.num_replicas_in_sync > 1:
        index, workers = distributed.worker_info(strategy)
        say(f"strategy {config.strategy}: {strategy.num_replicas_in_sync} replicas on {workers} worker(s); "
            f"this is worker {index}")
    batch = config.batch_classes * config.batch_per_class
    steps_per_epoch = config.steps_per_epoch or -(-len(split.train) // batch)
    with strategy.scope():
        model = build_model(config, channels, split.train.num_classes, total_steps=config.epochs * steps_per_epoch)
    transform = transforms.eval_transform(config.image_size) if config.augment else None
    backup = None
    if config.epochs > 0:
        backup_path = backup_dir(config) if config.backup else None
        # The backup is kept when fit completes, and deleted only once every output is written.
        train_data, callbacks = training_pipeline(
            model, split.train, config.batch_classes, config.batch_per_class, config.image_size, channels,
            seed=config.seed, recluster_every=config.recluster_every, conquer_epochs=config.conquer_epochs,
            cluster_on=config.cluster_on, small_classes=config.small_classes,
            augment=training_transform(config), steps_per_epoch=steps_per_epoch, backup_dir=backup_path,
            delete_backup=False)
        callbacks.append(LearningCheck(strict=config.strict))
        if backup_path:
            backup = callbacks[0]
            CURRENT_RUN.update(backup_dir=backup_path, epochs=config.epochs)
        trained = backup.restore_completed(model) if backup is not None else None
        if trained is not None:
            say(f"training had completed ({trained} epochs, backed up in {backup_path}): no training step, "
                "writing the outputs")
        else:
            if backup_path:
                say(f"backing up to {backup_path} between epochs (run the same command again to resume)")
            if split.test is not None and (config.eval_every > 0 or config.log_dir):
                evaluation_data = data.evaluation_dataset(split.test, config.image_size, channels,
                                                          config.eval_batch_size, transform=transform)
                callbacks.append(evaluation.RetrievalEvaluation(
                    evaluation_data, every=config.eval_every or config.epochs, seed=config.seed))
            if config.log_dir and chief:
                callbacks.append(tensorboard_callback(config, split.test, channels, transform, callbacks))
            start = time.perf_counter()
            history = model.fit(train_data, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                                callbacks=callbacks,
                                verbose=0 if not chief else 1 if sys.stdout.isatty() and config.progress else 2)
            seconds = max(time.perf_counter() - start, 1e-9)
            # Only what this run trained: a resumed run starts after the backed-up epochs.
            epochs_run = len(history.epoch)
            images = epochs_run * steps_per_epoch * batch
            resumed = backup.restored_epoch if backup is not None else None
            say(f"trained {epochs_run} epoch{'' if epochs_run == 1 else 's'} in {seconds:.1f} s "
                f"({images / seconds:.0f} images/s)"
                + (f", resumed after epoch {resumed} ({config.epochs} epochs in all)" if resumed else ""))
        CURRENT_RUN["trained"] = backup is not None
    return Trained(model, split, channels, transform, chief, backup)


def _finish(config: TrainConfig, trained: Trained) -> dict[str, float]:
    """The evaluation and outputs of `train` after `fit`; the backup is deleted once all are written."""
    from pddm_tf import evaluation
    from pddm_tf.export import export_saved_model
    from pddm_tf.training import distributed

    model, split, channels, transform, chief, backup = trained
    say = print if chief else (lambda *args, **kwargs: None)
    metrics: dict[str, float] = {}
    if split.test is not None:
        # Sharded over every replica of every worker, gathered on all of them.
        embeddings = distributed.embed_files(model, split.test, config.image_size, channels, config.eval_batch_size,
                                             transform=transform)
        labels = split.test.labels
        metrics = evaluation.evaluate_retrieval(embeddings, labels, seed=config.seed, rerank=config.rerank,
                                                pair_scores=lambda a, b: model.pddm((a, b)).numpy())
        metrics.update(few_shot_metrics(config, embeddings, split.test, say))
        if chief:
            report(metrics, f"held-out retrieval ({split.test.num_classes} unseen classes, {len(labels)} images)",
                   config.json)
            if config.log_dir and config.epochs == 0:  # no fit, so no TensorBoard callback: the projector only
                tensorboard_callback(config, split.test, channels, transform, []).write_projector_of(embeddings,
                                                                                                    labels)
    if config.export_dir:
        with _output_dir(config.export_dir, chief) as export_dir:
            path = export_saved_model(model, export_dir, config.image_size, channels, transform=transform,
                                      max_image_pixels=config.max_image_pixels)
        say(f"SavedModel exported to {path}")
    if config.save_model:
        from pddm_tf.export import save_keras_model

        with _output_dir(config.save_model, chief) as save_path:
            path = save_keras_model(model, save_path)
        say(f"Keras model saved to {path}")
    if backup is not None and chief:
        # Every output is written: only now may the trained state go.
        shutil.rmtree(backup.backup_dir, ignore_errors=True)
    CURRENT_RUN.clear()
    return metrics
