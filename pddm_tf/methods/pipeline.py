"""The batches and callbacks each method trains with: `training_pipeline`, for `model.fit`."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from pddm_tf import data
from pddm_tf.models import (
    ClusterAssignment,
    DivideAndConquer,
    DivideAndConquerModel,
    EmbeddingModel,
    cluster_balanced_dataset,
)
from pddm_tf.training.distributed import distribute_training_data
from pddm_tf.training.fault_tolerance import BackupAndRestore, SamplerPosition


def training_pipeline(model: EmbeddingModel, files: data.ImageFiles, batch_classes: int, batch_per_class: int,
                      image_size: int, channels: int, seed: int = 0, recluster_every: int = 2,
                      conquer_epochs: int = 1, cluster_on: str = "features", small_classes: str = "error",
                      augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
                      steps_per_epoch: int | None = None, backup_dir: str | None = None,
                      delete_backup: bool = True,
                      ) -> tuple[tf.data.Dataset | tf.distribute.DistributedDataset, list[keras.callbacks.Callback]]:
    """The training batches and callbacks that `model.fit` needs for `model`'s method.

    Every method trains on P x K class-balanced batches of `files`. A `DivideAndConquerModel`
    trains on per-cluster batches (`cluster_balanced_dataset`) under the `DivideAndConquer`
    schedule: cluster at the start, re-cluster every `recluster_every` epochs, and the last
    `conquer_epochs` epochs on all data; the other arguments are then used. `augment` (e.g.
    `transforms.train_transform(...)`) transforms every training image; `small_classes` says what
    plain P x K batches do with classes of fewer than K images (see `data.class_balanced_dataset`;
    clusters always cycle such classes' images).

    Batch t of the sampling sequence depends only on `seed` and t (and, for Divide-and-Conquer, on
    the clustering), and every iterator starts at the optimiser's step counter (the
    `fault_tolerance.SamplerPosition` callback): a resumed `fit` continues the sequence exactly. Under a
    multi-worker strategy (the one `model` was created in) each worker reads and decodes only its
    slice of every batch (`distributed.distribute_training_data`).

    Args:
      steps_per_epoch: S, the `steps_per_epoch` of `fit`. Divide-and-Conquer needs it so that no
        batch of an epoch is drawn before that epoch's re-clustering (its iterators end with the
        epoch); the other methods ignore it.
      backup_dir: if given, the callbacks start with a `fault_tolerance.BackupAndRestore` there,
        covering the model, its optimisers, the sampler position and the clustering.
      delete_backup: delete the backup when `fit` completes; False keeps it, with the completed
        state (`BackupAndRestore(delete_checkpoint=False)`), for the caller to delete once its
        outputs are written.

    Returns:
      (dataset, callbacks) to pass to `fit`; the callbacks are the pipeline's: without them the
      batches restart from the beginning of the sequence (and Divide-and-Conquer has no clusters).
    """
    position = SamplerPosition()
    start_step = position.step
    strategy = model.distribute_strategy
    state: dict[str, tf.Module] = {}
    if not isinstance(model, DivideAndConquerModel):
        dataset = distribute_training_data(strategy, lambda shard: data.class_balanced_dataset(
            files, batch_classes, batch_per_class, image_size, channels, seed=seed, small_classes=small_classes,
            augment=augment, start_step=start_step, shard=shard))
        callbacks: list[keras.callbacks.Callback] = [position]
    else:
        if steps_per_epoch is None:
            raise ValueError("Divide-and-Conquer needs steps_per_epoch (that of fit): its batches follow the "
                             "epoch's clustering")
        assignment = ClusterAssignment(len(files), model.num_learners)
        dataset = distribute_training_data(strategy, lambda shard: cluster_balanced_dataset(
            files, assignment, batch_classes, batch_per_class, image_size, channels, seed, augment=augment,
            start_step=start_step, steps_per_epoch=steps_per_epoch, shard=shard))
        callbacks = [position, DivideAndConquer(assignment, files, image_size, channels, batch_classes=batch_classes,
                                      recluster_every=recluster_every, conquer_epochs=conquer_epochs,
                                      cluster_on=cluster_on, seed=seed)]
        state["clusters"] = assignment
    if backup_dir:
        callbacks.insert(0, BackupAndRestore(backup_dir, state=state, delete_checkpoint=delete_backup))
    return dataset, callbacks
