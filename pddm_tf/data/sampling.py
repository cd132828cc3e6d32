"""Class-balanced P x K training batches (from files or arrays, sharded, resumable at a step) and the
evaluation pipeline, as `tf.data` datasets that read and decode files on the fly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pddm_tf.data.batch_checks import check_balanced_batches, check_balanced_counts, steps_per_pass_of_counts
from pddm_tf.data.decode import read_image
from pddm_tf.data.files import ImageFiles

_AUTOTUNE = tf.data.AUTOTUNE


# Folded into the sampling seed to derive per-image augmentation seeds, so that these differ
# from the seeds of the passes' class and image shuffles.
_AUGMENT_STREAM = 0x5EED


def balanced_batch_indices(
    labels: tf.Tensor,
    num_classes: int,
    batch_classes: int,
    batch_per_class: int,
    seed: tf.Tensor,
    member_mask: tf.Tensor | None = None,
    min_class_size: int = 2,
) -> tf.Tensor:
    """Row indices of the P x K batches of one sampling pass, computed in-graph.

    A class is *eligible* when it has at least `min_class_size` member rows (the rows where
    `member_mask` is True; every row without a mask). The eligible classes are shuffled and
    cut into B = E // P groups of P consecutive classes (E eligible classes; the E % P left
    over sit this pass out), so a pass visits every eligible class at most once, and
    exactly once when P divides E. Each class of a group contributes K rows: its member
    rows in a fresh random order, taken cyclically. The K rows are distinct when the class
    has at least K members and repeat only when it has fewer (each member then appears
    floor(K / n) or ceil(K / n) times).

    Costs one sort of the N rows, O(N log N), per call and touches no image. The result
    depends only on the arguments (stateless random ops), so it is reproducible given
    `seed`; it is traceable (tf.function, tf.data) and holds no Python loop per row.

    Args:
      labels: [N] int32/int64 class ids in [0, num_classes).
      num_classes: C, the number of class ids.
      batch_classes: P >= 1, classes per batch.
      batch_per_class: K >= 1, rows per class.
      seed: [2] int32/int64 stateless seed of this pass, e.g. `tf.stack([seed, pass_index])`.
      member_mask: optional [N] bool: only rows where it is True are sampled (e.g. the
        images of one cluster); eligibility counts member rows only.
      min_class_size: classes with fewer member rows are never sampled. 2 (default): a
        class with a single image has no positive pair. 1 admits single-image classes.

    Returns:
      [B, P*K] int64 row indices into `labels`: row b is one batch, its entries
      k*K .. k*K+K-1 the rows of its k-th class.

    Raises:
      tf.errors.InvalidArgumentError: fewer than P eligible classes (when run, also in a graph).
      ValueError: P, K or `min_class_size` below 1.
    """
    for name, value in (("batch_classes", batch_classes), ("batch_per_class", batch_per_class),
                        ("min_class_size", min_class_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    labels = tf.cast(labels, tf.int64)
    num_rows = tf.size(labels, out_type=tf.int64)
    if member_mask is not None:
        # Non-members get the spare id C: they sort after every class and are never sampled.
        labels = tf.where(tf.cast(member_mask, tf.bool), labels, tf.constant(num_classes, tf.int64))
    class_seed, pool_seed = tf.unstack(tf.random.experimental.stateless_split(seed))
    # Sorting by (label, random rank) lays every class out as a contiguous, freshly shuffled
    # run: its first K rows are K distinct images drawn without replacement.
    ranks = tf.random.experimental.stateless_shuffle(tf.range(num_rows), seed=pool_seed)
    by_class = tf.argsort(labels * num_rows + ranks)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(labels), labels, num_classes + 1)[:num_classes]
    starts = tf.cumsum(counts, exclusive=True)  # Where each class's run starts in `by_class`.
    classes = tf.random.experimental.stateless_shuffle(tf.range(num_classes), seed=class_seed)
    classes = tf.boolean_mask(classes, tf.gather(counts, classes) >= min_class_size)
    num_batches = tf.size(classes) // batch_classes
    enough = tf.debugging.assert_greater_equal(
        num_batches, 1,
        message=f"fewer than batch_classes={batch_classes} classes have >= {min_class_size} member rows",
    )
    with tf.control_dependencies([enough]):
        classes = classes[: num_batches * batch_classes]
    # Cycling through the run: distinct rows while the class has enough, repeats after.
    class_counts = tf.gather(counts, classes)[:, None]
    offsets = tf.math.floormod(tf.range(batch_per_class, dtype=tf.int64)[None, :], class_counts)
    rows = tf.gather(by_class, tf.gather(starts, classes)[:, None] + offsets)  # [B*P, K]
    return tf.reshape(tf.cast(rows, tf.int64), [-1, batch_classes * batch_per_class])


def class_balanced_dataset(
    files: ImageFiles,
    batch_classes: int,
    batch_per_class: int,
    image_size: int,
    channels: int,
    seed: int = 0,
    *,
    small_classes: str = "error",
    augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
    start_step: tf.Variable | None = None,
    shard: tuple[int, int] = (0, 1),
) -> tf.data.Dataset:
    """Infinite P x K batches: P distinct classes, K images of each.

    Sampling goes by passes (an epoch is a pass). Pass p shuffles the eligible classes
    (seeded by `(seed, p)`) and cuts the permutation into `steps_per_pass` groups of P
    consecutive classes, dropping the incomplete tail group; every class of a group
    contributes K images drawn from its pool, reshuffled each pass
    (`balanced_batch_indices`, in-graph). The pipeline only streams file indices: files are
    read and decoded per image in parallel (order preserved), so the dataset is
    deterministic given `seed` and never holds the images. The paths, labels and rotations
    are tensors created once here and captured by reference, so the traced functions stay
    small whatever the number of files (a serialised dataset graph holds them once).

    Args:
      files: the images to sample.
      batch_classes: P >= 2, classes per batch.
      batch_per_class: K >= 1, images per class.
      image_size: side s of the decoded images.
      channels: channels c of the decoded images.
      seed: sampling (and augmentation) seed.
      small_classes: what classes with fewer than K images do.
        "error" (default): every class needs K images (ValueError naming the first that
        has fewer); every class is eligible, the K images of a class are always distinct.
        "cycle": for datasets with small classes (Stanford Online Products: 2 to 12 images
        per class). Classes with at least 2 images are eligible; one with n < K images
        contributes its n images in a shuffled order taken cyclically (repeats only
        there). Classes with a single image are never sampled (no positive pair).
      augment: None (default): `decode_image`, the whole image resized to s x s.
        Otherwise a `pddm_tf.data.transforms.Transform` applied to each decoded full-size image
        (after its rotation) with a per-image seed derived from `seed` and the image's
        position in the stream, e.g. `transforms.train_transform(s)`; it must return
        [s, s, c] float32.
      start_step: None (default): every iterator starts at batch 0. Otherwise a scalar integer
        variable, read when an iterator starts: the iterator yields batches t, t+1, ... of the
        same sequence, from t = its value. With `model.optimizer.iterations` a fresh iterator
        (a resumed `fit`) continues exactly where training stopped (`fault_tolerance`).
      shard: (i, n): keep the i-th of n equal slices of every batch (rows i*P*K/n onwards),
        read and decode only those: worker i of n under a multi-worker strategy. Sampling
        and augmentation seeds are those of the whole batch, so the n shards together are the
        unsharded batch.

    Returns:
      A dataset of (images [P*K/n, s, s, c] float32 in [0, 1], labels [P*K/n] int32); rows
      are grouped by class: rows k*K .. k*K+K-1 of the whole batch hold its k-th class.

    Raises:
      ValueError: P < 2, K < 1, fewer than 2 classes, fewer than P eligible classes, an
        unknown `small_classes`, (with "error") a class with fewer than K images, or a `shard`
        that does not cut P*K into equal slices.
    """
    if batch_classes < 2:
        raise ValueError(f"batch_classes must be >= 2 (a batch needs negatives), got {batch_classes}")
    if batch_per_class < 1:
        raise ValueError(f"batch_per_class must be >= 1, got {batch_per_class}")
    check_balanced_batches(files, batch_classes, batch_per_class, small_classes)
    batch_size = batch_classes * batch_per_class
    rows_per_shard = shard_size(batch_size, shard)
    # Created once, eagerly: the dataset functions capture these by reference.
    paths = tf.constant(files.paths)
    # Only rotated copies (Omniglot) need a rotation per file; the others skip the tensor.
    rotations = tf.constant(files.rotations) if files.rotations.any() else None
    seed_tensor = tf.constant(seed, tf.int64)

    def rotation(row: tf.Tensor) -> tf.Tensor | int:
        return rotations[row] if rotations is not None else 0

    rows = _balanced_rows(files.labels, files.num_classes, batch_classes, batch_per_class, seed, small_classes,
                          start_step)
    if shard[1] > 1:
        rows = rows.filter(lambda position, _: (position % batch_size) // rows_per_shard == shard[0])
    if augment is None:
        images = rows.map(
            lambda _, row_label: (read_image(paths[row_label[0]], image_size, channels, rotation(row_label[0])),
                                  row_label[1]),
            num_parallel_calls=_AUTOTUNE,
            deterministic=True,
        )
    else:
        def load_augmented(position: tf.Tensor, row_label: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
            row, label = row_label
            # A seed per image position, so the augmentation does not depend on parallelism.
            image_seed = tf.random.experimental.stateless_fold_in(tf.stack([seed_tensor, position]), _AUGMENT_STREAM)
            image = read_image(paths[row], image_size, channels, rotation(row), transform=augment, seed=image_seed)
            return image, label

        images = rows.map(load_augmented, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return (
        # A pass holds whole batches, so batch boundaries stay aligned with class groups.
        images.batch(rows_per_shard, drop_remainder=True)
        .prefetch(_AUTOTUNE)
    )


def _balanced_rows(labels: np.ndarray, num_classes: int, batch_classes: int, batch_per_class: int, seed: int,
                   small_classes: str, start_step: tf.Variable | None) -> tf.data.Dataset:
    """The row stream of `class_balanced_dataset`: (global row position, (row index, label)), pass after
    pass of `balanced_batch_indices`, from the batch `start_step` holds (0 if None)."""
    batch_size = batch_classes * batch_per_class
    min_class_size = 1 if small_classes == "error" else 2
    passes = steps_per_pass_of_counts(np.bincount(labels, minlength=num_classes), batch_classes, small_classes)
    labels_tensor = tf.constant(labels)
    seed_tensor = tf.constant(seed, tf.int64)

    def pass_rows(pass_index: tf.Tensor) -> tf.data.Dataset:
        """The (row index, label) rows of one pass, batch after batch."""
        pass_seed = tf.stack([seed_tensor, pass_index])
        rows = tf.reshape(balanced_batch_indices(labels_tensor, num_classes, batch_classes, batch_per_class,
                                                 pass_seed, min_class_size=min_class_size), [-1])
        return tf.data.Dataset.from_tensor_slices((rows, tf.gather(labels_tensor, rows)))

    def rows_from(first_step: tf.Tensor) -> tf.data.Dataset:
        first_pass, offset = first_step // passes, first_step % passes
        return (tf.data.Dataset.counter(start=first_pass).flat_map(pass_rows)
                .skip(offset * batch_size)  # indices only: nothing is read for skipped rows
                .enumerate(start=first_step * batch_size))

    return from_step(start_step, rows_from)


def class_balanced_dataset_from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    batch_classes: int,
    batch_per_class: int,
    seed: int = 0,
    *,
    small_classes: str = "error",
    start_step: tf.Variable | None = None,
) -> tf.data.Dataset:
    """Infinite P x K batches of in-memory arrays: P distinct classes, K rows of each.

    The in-memory counterpart of `class_balanced_dataset` (TF Similarity's `MultiShotMemorySampler`,
    pytorch-metric-learning's `MPerClassSampler`): the same sampling (`balanced_batch_indices`, pass
    after pass, deterministic given `seed`, resumable from `start_step`), but rows are gathered from
    `x` instead of decoded from files. Pass the result to `model.fit` with `steps_per_epoch`.

    Args:
      x: [N, ...] rows (images [N, s, s, c] float32 in [0, 1], or any features); kept as one tensor.
      y: [N] integer class labels (any values; they are returned as given, as int32).
      batch_classes: P >= 2; batch_per_class: K >= 1.
      seed: sampling seed.
      small_classes: "error" (every class needs K rows) or "cycle" (classes with 2 to K-1 rows are
        cycled, single-row classes never sampled), as in `class_balanced_dataset`.
      start_step: as in `class_balanced_dataset`.

    Returns:
      A dataset of (x batch [P*K, ...], labels [P*K] int32), rows k*K .. k*K+K-1 from the k-th class.

    Raises:
      ValueError: mismatched or empty arrays, non-integer labels, or classes that cannot make P x K
        batches (the message names the class).
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"x [N, ...] and y [N] must have the same N >= 1, got shapes {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if batch_classes < 2:
        raise ValueError(f"batch_classes must be >= 2 (a batch needs negatives), got {batch_classes}")
    if batch_per_class < 1:
        raise ValueError(f"batch_per_class must be >= 1, got {batch_per_class}")
    classes, class_ids = np.unique(y, return_inverse=True)
    class_ids = class_ids.astype(np.int32)
    check_balanced_counts(np.bincount(class_ids, minlength=len(classes)), tuple(str(c) for c in classes),
                           batch_classes, batch_per_class, small_classes)
    rows = _balanced_rows(class_ids, len(classes), batch_classes, batch_per_class, seed, small_classes, start_step)
    features = tf.constant(x)
    labels = tf.constant(y.astype(np.int32))
    return (rows.map(lambda _, row_label: row_label[0])
            .batch(batch_classes * batch_per_class, drop_remainder=True)
            # One gather per batch, not per row.
            .map(lambda batch_rows: (tf.gather(features, batch_rows), tf.gather(labels, batch_rows)),
                 num_parallel_calls=_AUTOTUNE, deterministic=True)
            .prefetch(_AUTOTUNE))


def shard_size(batch_size: int, shard: tuple[int, int]) -> int:
    """Rows per shard of a batch; checks that `shard` = (i, n) cuts it into n equal slices."""
    index, count = shard
    if count < 1 or not 0 <= index < count or batch_size % count:
        raise ValueError(f"shard (index, count) = {shard} must have 0 <= index < count and count dividing the "
                         f"batch size {batch_size}")
    return batch_size // count


def from_step(start_step: tf.Variable | None, dataset_from: Callable[[tf.Tensor], tf.data.Dataset]
               ) -> tf.data.Dataset:
    """`dataset_from(t)`, with t read from `start_step` each time an iterator starts (0 if None).

    The read sits inside a flat_map function, which runs when the iterator asks for its first
    element: a dataset built once still starts where the variable says at every new iterator.
    """
    if start_step is None:
        return dataset_from(tf.constant(0, tf.int64))
    return tf.data.Dataset.from_tensors(0).flat_map(
        lambda _: dataset_from(tf.cast(tf.convert_to_tensor(start_step), tf.int64)))


def evaluation_dataset(
    files: ImageFiles,
    image_size: int,
    channels: int,
    batch_size: int = 256,
    *,
    transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
    cache: bool | str = False,
) -> tf.data.Dataset:
    """One pass over `files` in order: (images [b, s, s, c] float32 in [0, 1], labels [b] int32).

    b = `batch_size` except for a smaller last batch; decoding runs in parallel, order kept.

    Args:
      files: the images.
      image_size: side s of the images.
      channels: channels c of the images.
      batch_size: b >= 1.
      transform: None (default): `decode_image`, the whole image resized to s x s.
        Otherwise a `pddm_tf.data.transforms.Transform` applied to each decoded full-size image
        (after its rotation), e.g. `transforms.eval_transform(s)` (shorter side to 8/7 s,
        centre s x s crop); it must return [s, s, c] float32 and is given a zero seed.
      cache: False (default) decodes on every pass. True keeps the decoded images in
        memory after the first complete pass (n * s * s * c * 4 bytes); a string caches
        them in files with that path prefix (reusable across runs with the same files and
        transform; a partial first pass leaves no usable cache).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def load(path: tf.Tensor, rotation: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return read_image(path, image_size, channels, rotation, transform=transform), label

    dataset = tf.data.Dataset.from_tensor_slices((files.paths, files.rotations, files.labels)).map(
        load, num_parallel_calls=_AUTOTUNE, deterministic=True
    )
    if cache is not False:
        dataset = dataset.cache("" if cache is True else str(cache))  # "": in memory.
    return dataset.batch(batch_size).prefetch(_AUTOTUNE)
