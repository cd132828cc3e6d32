"""Divide-and-Conquer's data side: clustering the training set and per-cluster P x K batches.

METHODS.md section 4. The training images are split into K clusters by k-means on their
L2-normalised backbone features (or embeddings); each cluster feeds one learner (one slice of the
embedding). The assignment lives in a `ClusterAssignment` (TF variables), which

  * `cluster_balanced_dataset` reads inside its `tf.data` graph at every batch, so a new clustering
    reaches the running `fit` without rebuilding or restarting anything (only the few batches
    already prefetched come from the previous clustering), and
  * the `DivideAndConquer` callback rewrites: initial clustering when training starts, re-clustering
    every T epochs with cluster ids matched to the previous ones (Hungarian algorithm on membership
    overlap), and the final "conquer" epochs in which all images form one cluster that trains the
    whole embedding.

Being a `tf.Module`, the assignment is saved by `tf.train.Checkpoint` like any other state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pddm_tf import progress
from pddm_tf.data import ImageFiles, balanced_batch_indices, from_step, read_image
from pddm_tf.data import shard_size as rows_per_shard
from pddm_tf.training.distributed import embed_files

#: Tag of a batch drawn from all images during the conquer phase (it trains the whole embedding).
CONQUER = -1
#: Cluster id of an image dropped from every cluster (its class has a single image in its cluster).
DROPPED = -1
CLUSTER_ON = ("features", "embeddings")
# Offset of the augmentation seeds from the sampling seed, so the two random streams differ.
_AUGMENT_STREAM = 0x5EED


class ClusterAssignment(tf.Module):
    """The current clustering of a training set, shared by the sampler and the callback.

    Attributes:
      num_clusters: K.
      ids: [N] int32 variable, each image's cluster in 0..K-1, or `DROPPED`.
      conquer: bool variable; when true every image is in one cluster (the conquer phase).
      initialized: bool variable; false until the first clustering is assigned.
    """

    def __init__(self, num_images: int, num_clusters: int, name: str = "cluster_assignment") -> None:
        super().__init__(name=name)
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be positive, got {num_clusters}")
        if num_images < 1:
            raise ValueError(f"a clustering needs images, got num_images={num_images}")
        self.num_clusters = int(num_clusters)
        self.ids = tf.Variable(tf.zeros([num_images], tf.int32), trainable=False, name="ids")
        self.conquer = tf.Variable(False, trainable=False, name="conquer")
        self.initialized = tf.Variable(False, trainable=False, name="initialized")

    def assign(self, ids: np.ndarray) -> None:
        """Sets the clustering: ids [N] in {DROPPED, 0..K-1}."""
        ids = np.asarray(ids)
        if ids.shape != tuple(self.ids.shape):
            raise ValueError(f"cluster ids must have shape {tuple(self.ids.shape)}, got {ids.shape}")
        if ids.size and (ids.min() < DROPPED or ids.max() >= self.num_clusters):
            raise ValueError(f"cluster ids must lie in [{DROPPED}, {self.num_clusters}), "
                             f"got [{ids.min()}, {ids.max()}]")
        self.ids.assign(ids.astype(np.int32))
        self.initialized.assign(True)

    def numpy(self) -> np.ndarray:
        """The current ids [N] as numpy."""
        return self.ids.numpy()


# --------------------------------------------------------------------------- clustering


def kmeans_clusters(features: np.ndarray, num_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means (scikit-learn, k-means++ initialisation) of the L2-normalised rows of features [N, f].

    Returns the cluster ids [N] int32 in 0..K-1. Rows are normalised first (zero-safe), as the
    authors cluster unit-length features.
    """
    # scikit-learn takes seconds to import: only a Divide-and-Conquer run that clusters pays for it.
    from sklearn.cluster import KMeans

    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must have shape [N, f], got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features to cluster contain NaN or inf")
    if len(features) < num_clusters:
        raise ValueError(f"cannot make {num_clusters} clusters of {len(features)} images")
    if num_clusters == 1:
        return np.zeros(len(features), np.int32)
    norms = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    kmeans = KMeans(n_clusters=num_clusters, n_init=3, random_state=seed)
    with progress.step(f"k-means of {len(features)} images into {num_clusters} clusters"):
        return kmeans.fit_predict(features / norms).astype(np.int32)


def match_clusters(new_ids: np.ndarray, old_ids: np.ndarray, num_clusters: int) -> np.ndarray:
    """Renames the clusters of `new_ids` so they overlap most with `old_ids` (Hungarian algorithm).

    The overlap matrix O[a, b] counts images in new cluster a and old cluster b (images that are
    `DROPPED` in either are not counted); `scipy.optimize.linear_sum_assignment` finds the
    one-to-one renaming a -> b of maximum total overlap, so learner k keeps training on (mostly)
    the same images after a re-clustering. Returns the renamed ids [N]; `DROPPED` stays.
    """
    # SciPy is imported only when a Divide-and-Conquer run re-clusters.
    from scipy.optimize import linear_sum_assignment

    new_ids, old_ids = np.asarray(new_ids), np.asarray(old_ids)
    if new_ids.shape != old_ids.shape:
        raise ValueError(f"clusterings differ in size: {new_ids.shape} and {old_ids.shape}")
    both = (new_ids >= 0) & (old_ids >= 0)
    overlap = np.zeros((num_clusters, num_clusters), np.int64)
    np.add.at(overlap, (new_ids[both], old_ids[both]), 1)
    rows, columns = linear_sum_assignment(overlap, maximize=True)
    rename = np.empty(num_clusters, np.int32)
    rename[rows] = columns
    return np.where(new_ids >= 0, rename[np.maximum(new_ids, 0)], DROPPED).astype(np.int32)


def drop_singleton_classes(ids: np.ndarray, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """Marks `DROPPED` every image that is the only one of its class in its cluster.

    Such an image has no positive partner in its cluster's batches (METHODS.md section 4: the
    class is dropped from that cluster). ids [N], labels [N] -> ids [N].
    """
    ids, labels = np.asarray(ids), np.asarray(labels)
    kept = ids >= 0
    num_classes = int(labels.max()) + 1 if labels.size else 0
    counts = np.zeros((num_clusters, num_classes), np.int64)
    np.add.at(counts, (ids[kept], labels[kept]), 1)
    single = np.zeros_like(kept)
    single[kept] = counts[ids[kept], labels[kept]] == 1
    return np.where(single, DROPPED, ids).astype(np.int32)


def cluster_quality(ids: np.ndarray, labels: np.ndarray, num_clusters: int) -> dict[str, float]:
    """How closely a clustering of the training set follows its classes (METHODS.md section 4, "Measured").

    ids [N] in {DROPPED, 0..K-1} (as `compute_clusters` returns them), labels [N] class ids >= 0. Returns
      coherence: mean over classes of the fraction of the class's images (dropped ones included) that lie in
        the cluster holding most of them: 1 = no class is split, about 1/K for a random split of large classes;
      nmi: normalised mutual information (arithmetic mean, scikit-learn) of cluster ids and labels, kept images;
      dropped: the fraction of images that are `DROPPED`;
      size_min, size_max: the fewest and the most images kept in one cluster.
    """
    # scikit-learn is already loaded by the k-means this follows (see kmeans_clusters).
    from sklearn.metrics import normalized_mutual_info_score

    ids, labels = np.asarray(ids), np.asarray(labels)
    for name, values in (("ids", ids), ("labels", labels)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got dtype {values.dtype}")
    if ids.ndim != 1 or ids.shape != labels.shape or not ids.size:
        raise ValueError(f"ids and labels must be non-empty and of one shape [N], got {ids.shape} and {labels.shape}")
    if ids.min() < DROPPED or ids.max() >= num_clusters or labels.min() < 0:
        raise ValueError(f"ids must lie in [{DROPPED}, {num_clusters}) and labels be >= 0, got ids in "
                         f"[{ids.min()}, {ids.max()}] and labels from {labels.min()}")
    kept = ids >= 0
    class_sizes = np.bincount(labels)
    counts = np.zeros((len(class_sizes), num_clusters), np.int64)
    np.add.at(counts, (labels[kept], ids[kept]), 1)
    present = class_sizes > 0
    sizes = np.bincount(ids[kept], minlength=num_clusters)
    nmi = normalized_mutual_info_score(labels[kept], ids[kept]) if kept.any() else 0.0
    return {"coherence": float(np.mean(counts.max(axis=1)[present] / class_sizes[present])), "nmi": float(nmi),
            "dropped": float(1.0 - kept.mean()), "size_min": float(sizes.min()), "size_max": float(sizes.max())}


def check_clusters(ids: np.ndarray, labels: np.ndarray, num_clusters: int, batch_classes: int = 2) -> None:
    """Raises a clear error if a cluster cannot make P x K batches: fewer than P = `batch_classes`
    classes with two or more images in it."""
    for cluster in range(num_clusters):
        members = labels[ids == cluster]
        eligible = int((np.unique(members, return_counts=True)[1] >= 2).sum())
        if eligible < max(batch_classes, 2):
            raise ValueError(
                f"cluster {cluster} has {eligible} classes with two or more images, but its batches need "
                f"batch_classes={batch_classes}; use fewer learners than {num_clusters} or fewer classes per batch")


def cluster_features(model: keras.Model, files: ImageFiles, image_size: int, channels: int,
                     on: str = "features", batch_size: int = 256) -> np.ndarray:
    """What k-means clusters: one batched forward pass over `files` (no per-image Python loop).

    on="features": the backbone's pooled features [N, k]; on="embeddings": the full embeddings [N, d].
    """
    if on not in CLUSTER_ON:
        raise ValueError(f"unknown cluster_on {on!r}; expected one of {CLUSTER_ON}")
    network = model.backbone if on == "features" else model
    # float32 under a mixed-precision policy too (the backbone's features are then float16 / bfloat16).
    return np.asarray(embed_files(network, files, image_size, channels, batch_size), dtype=np.float32)


def compute_clusters(features: np.ndarray, labels: np.ndarray, num_clusters: int,
                     previous: np.ndarray | None = None, seed: int = 0, batch_classes: int = 2) -> np.ndarray:
    """One (re-)clustering: k-means, Hungarian renaming to `previous`, singleton classes dropped.

    features [N, f], labels [N] -> ids [N] in {DROPPED, 0..K-1}; raises if a cluster cannot make
    batches of `batch_classes` classes.
    """
    ids = kmeans_clusters(features, num_clusters, seed)
    if previous is not None:
        ids = match_clusters(ids, previous, num_clusters)
    ids = drop_singleton_classes(ids, labels, num_clusters)
    check_clusters(ids, np.asarray(labels), num_clusters, batch_classes)
    return ids


# --------------------------------------------------------------------------- batches


def cluster_balanced_dataset(files: ImageFiles, assignment: ClusterAssignment, batch_classes: int,
                             batch_per_class: int, image_size: int, channels: int, seed: int = 0,
                             augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
                             start_step: tf.Variable | None = None, steps_per_epoch: int | None = None,
                             shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """P x K batches, each from one cluster, clusters visited round-robin (METHODS.md section 4).

    Step t draws from cluster t mod K: P of its classes with two or more images in it (drawn afresh
    at every step), K of their images in the cluster each, cycled when a class has fewer there
    (`pddm_tf.data.balanced_batch_indices`). The clustering is read from `assignment` when the batch is
    drawn, so changing it (re-clustering, the conquer phase) takes effect in the running pipeline;
    in the conquer phase every batch is drawn from all images and tagged `CONQUER`. Deterministic
    given `seed` and the sequence of assignments. `augment(image, seed [2])` (e.g.
    `pddm_tf.data.transforms.train_transform(...)`) replaces the plain resize of every image, with a
    stateless seed per image position.

    Args:
      start_step: as in `pddm_tf.data.class_balanced_dataset`: a variable (the optimiser's
        `iterations`) read when an iterator starts; its batches are steps t, t+1, ... from its value.
      steps_per_epoch: None: infinite. S: every iterator yields S batches, one epoch (it should start
        at an epoch boundary, as `fit` and `fault_tolerance` do). Keras then starts a new iterator for
        each epoch, after the epoch-end re-clustering, so no batch of an epoch is drawn (prefetched)
        before the clustering it belongs to: the batches depend on the step and the clustering only, which a resumed run
        reproduces exactly.
      shard: (i, n): only the i-th of n equal slices of every batch (a worker's share).

    Returns:
      A dataset of (images [P*K/n, s, s, c] float32, labels [P*K/n] int32, tags [P*K/n] int32): tags
      holds the batch's cluster id in every row (every replica's shard of a batch carries it).
    """
    if batch_classes < 2:
        raise ValueError(f"batch_classes must be >= 2 (a batch needs negatives), got {batch_classes}")
    if batch_per_class < 1:
        raise ValueError(f"batch_per_class must be >= 1, got {batch_per_class}")
    if len(files) != assignment.ids.shape[0]:
        raise ValueError(f"the assignment covers {assignment.ids.shape[0]} images but files has {len(files)}")
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    paths = tf.constant(files.paths)
    labels = tf.constant(files.labels)
    rotations = tf.constant(files.rotations)
    num_clusters = assignment.num_clusters
    batch_size = batch_classes * batch_per_class
    shard_size = rows_per_shard(batch_size, shard)

    def batch_indices(step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        conquer = assignment.conquer.read_value()
        cluster = tf.where(conquer, CONQUER, tf.cast(step % num_clusters, tf.int32))
        member = tf.logical_or(conquer, tf.equal(assignment.ids.read_value(), cluster))
        # The first batch of a fresh pass over the cluster: P random eligible classes, K images each.
        indices = balanced_batch_indices(labels, files.num_classes, batch_classes, batch_per_class,
                                         tf.stack([tf.constant(seed, tf.int64), step]), member_mask=member)[0]
        return indices, tf.fill([batch_size], cluster)

    def steps_from(first_step: tf.Tensor) -> tf.data.Dataset:
        steps = tf.data.Dataset.counter(start=first_step)
        if steps_per_epoch is not None:
            steps = steps.take(steps_per_epoch)
        return (steps.map(batch_indices)
                .flat_map(lambda indices, tags: tf.data.Dataset.from_tensor_slices((indices, tags)))
                .enumerate(start=first_step * batch_size))

    def load(position: tf.Tensor, item: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        index, tag = item
        if augment is None:
            image = read_image(paths[index], image_size, channels, rotations[index])
        else:
            # Seeded by the image's position in the stream, so parallel decoding stays deterministic.
            image_seed = tf.stack([tf.constant(seed, tf.int64) + _AUGMENT_STREAM, position])
            image = read_image(paths[index], image_size, channels, rotations[index], transform=augment, seed=image_seed)
        return image, labels[index], tag

    rows = from_step(start_step, steps_from)
    if shard[1] > 1:
        rows = rows.filter(lambda position, _: (position % batch_size) // shard_size == shard[0])
    batches = rows.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(shard_size,
                                                                                          drop_remainder=True)
    if steps_per_epoch is not None:
        # Known to Keras, which then starts a fresh iterator for every epoch.
        batches = batches.apply(tf.data.experimental.assert_cardinality(steps_per_epoch))
    return batches.prefetch(2)


# --------------------------------------------------------------------------- schedule


class DivideAndConquer(keras.callbacks.Callback):
    """The Divide-and-Conquer schedule of METHODS.md section 4, as a Keras callback.

    * training begins: cluster the training set (unless `assignment` already holds a clustering,
      e.g. restored from a checkpoint);
    * after every `recluster_every` epochs of the divide phase: re-cluster with the current network,
      ids matched to the previous clustering;
    * the last `conquer_epochs` epochs of `fit`: conquer (all images, whole embedding).

    Attributes:
      timings: seconds spent in each (re-)clustering, for the wall-time overhead.
      epochs_clustered: the epoch index after which each clustering was made (-1: before training).
      quality: `cluster_quality` of each clustering, with its "epoch" as in `epochs_clustered` (None: a clustering
        restored from a checkpoint). The newest one is added to every epoch's logs as cluster_coherence,
        cluster_nmi, cluster_dropped, cluster_size_min and cluster_size_max (progress bar, History, TensorBoard).

    Args:
      assignment: the state `cluster_balanced_dataset` reads.
      files, image_size, channels: the training images and how to decode them.
      batch_classes: P of the batches; every cluster must hold P classes with two or more images.
      recluster_every: T epochs (0 = cluster once).
      conquer_epochs: epochs at the end of `fit` trained on all data as one cluster.
      cluster_on: "features" (backbone, the authors' choice) or "embeddings".
      seed: k-means seed.
    """

    def __init__(self, assignment: ClusterAssignment, files: ImageFiles, image_size: int, channels: int,
                 batch_classes: int = 2, recluster_every: int = 2, conquer_epochs: int = 1,
                 cluster_on: str = "features",
                 batch_size: int = 256, seed: int = 0) -> None:
        super().__init__()
        if recluster_every < 0 or conquer_epochs < 0:
            raise ValueError(f"recluster_every and conquer_epochs must be >= 0, got {recluster_every}, "
                             f"{conquer_epochs}")
        if cluster_on not in CLUSTER_ON:
            raise ValueError(f"unknown cluster_on {cluster_on!r}; expected one of {CLUSTER_ON}")
        self.assignment = assignment
        self.files = files
        self.image_size = image_size
        self.channels = channels
        self.batch_classes = batch_classes
        self.recluster_every = int(recluster_every)
        self.conquer_epochs = int(conquer_epochs)
        self.cluster_on = cluster_on
        self.batch_size = batch_size
        self.seed = seed
        self.timings: list[float] = []
        self.epochs_clustered: list[int] = []
        self.quality: list[dict[str, Any]] = []

    def recluster(self, epoch: int = -1) -> np.ndarray:
        """Clusters the training set with the current network and stores it; returns the ids [N]."""
        start = time.perf_counter()
        if self.assignment.num_clusters == 1:
            # One cluster needs no features: every image is in it (minus single-image classes).
            features = np.zeros((len(self.files), 1), np.float32)
        else:
            features = cluster_features(self.model, self.files, self.image_size, self.channels, self.cluster_on,
                                        self.batch_size)
        previous = self.assignment.numpy() if bool(self.assignment.initialized.numpy()) else None
        ids = compute_clusters(features, self.files.labels, self.assignment.num_clusters, previous,
                               # Seeded by the epoch, not a count of calls, so a resumed run clusters alike.
                               self.seed + epoch + 1, self.batch_classes)
        self.assignment.assign(ids)
        self.timings.append(time.perf_counter() - start)
        self.epochs_clustered.append(epoch)
        self._measure(ids, epoch)
        return ids

    def _measure(self, ids: np.ndarray, epoch: int | None) -> None:
        # Between epochs, on the ids already on the host: no cost inside a training step.
        self.quality.append({"epoch": epoch, **cluster_quality(ids, self.files.labels, self.assignment.num_clusters)})

    def _conquer_from(self) -> int:
        """The first epoch of the conquer phase (`epochs` when there is none)."""
        return max(int(self.params.get("epochs", 0)) - self.conquer_epochs, 0)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not bool(self.assignment.initialized.numpy()):
            self.recluster()
        elif not self.quality:
            self._measure(self.assignment.numpy(), None)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.assignment.conquer.assign(epoch >= self._conquer_from())

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Only re-cluster when another divide epoch follows: conquer ignores the clusters.
        following = epoch + 1
        if self.recluster_every and following % self.recluster_every == 0 and following < self._conquer_from():
            self.recluster(epoch)
        if logs is not None and self.quality:
            logs.update({f"cluster_{name}": value for name, value in self.quality[-1].items() if name != "epoch"})
