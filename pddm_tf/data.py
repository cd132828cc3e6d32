"""Datasets for deep metric learning: labelled file lists, decoding and class-balanced batches.

Images are never held in memory: loaders return `ImageFiles` (paths + labels) and the
`tf.data` pipelines read and decode files on the fly. Metric-learning splits are by class:
the test classes are never seen in training (zero-shot retrieval / clustering protocol).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from pddm_tf import image_header, progress
from pddm_tf.registry import Registry

_logger = logging.getLogger(__name__)

_OMNIGLOT_ROOT = pathlib.Path(__file__).parent / "_data" / "omniglot_background_small"
_IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
# Leading bytes of the formats tf.io.decode_image understands: PNG, JPEG, GIF, BMP.
_MAGIC_NUMBERS = tuple(s for signatures in image_header.FORMAT_SIGNATURES.values() for s in signatures)
_SPLIT_BY = ("character", "alphabet")
_AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFiles:
    """A labelled list of image files (never the pixels).

    Attributes:
      paths: [n] str, one image file per row.
      labels: [n] int32, contiguous class ids in 0..num_classes-1.
      class_names: num_classes names; `class_names[label]` names a row's class.
      rotations: [n] int32 in {0, 1, 2, 3}, the number of 90-degree counter-clockwise
        rotations applied when the file is decoded (rotated copies act as new classes).

    The arrays are normalised to str / int32 read-only copies. Equality is identity
    (`eq=False`): element-wise array comparison has no single truth value.
    """

    paths: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    rotations: np.ndarray

    def __post_init__(self) -> None:
        paths = np.array(self.paths, dtype=str)
        labels = np.array(self.labels)
        rotations = np.array(self.rotations)
        class_names = tuple(str(name) for name in self.class_names)
        for name, array in (("paths", paths), ("labels", labels), ("rotations", rotations)):
            if array.ndim != 1:
                raise ValueError(f"ImageFiles.{name} must be 1-D, got shape {array.shape}")
            if len(array) != len(paths):
                raise ValueError(
                    f"ImageFiles fields differ in length: {len(paths)} paths, {len(array)} {name}"
                )
        for name, array in (("labels", labels), ("rotations", rotations)):
            if array.size and not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"ImageFiles.{name} must be integers, got dtype {array.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(
                f"ImageFiles.labels must lie in [0, {len(class_names)}), "
                f"got [{labels.min()}, {labels.max()}]"
            )
        if rotations.size and (rotations.min() < 0 or rotations.max() > 3):
            raise ValueError("ImageFiles.rotations must lie in {0, 1, 2, 3}")
        normalised = {
            "paths": paths,
            "labels": labels.astype(np.int32),
            "rotations": rotations.astype(np.int32),
        }
        for name, array in normalised.items():
            array.setflags(write=False)  # The dataclass is frozen; so are its arrays.
            object.__setattr__(self, name, array)
        object.__setattr__(self, "class_names", class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes, `len(class_names)`."""
        return len(self.class_names)

    def __len__(self) -> int:
        """Number of images n."""
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class DatasetSplit:
    """Train and test images over disjoint classes.

    Attributes:
      train: the training images.
      test: the test images, or None when `test_fraction == 0`.
      channels: channels to decode the images with (1 for Omniglot, 3 for folders by default).
    """

    train: ImageFiles
    test: ImageFiles | None
    channels: int


# --------------------------------------------------------------------------- loaders


def load_omniglot(
    test_fraction: float = 0.5,
    split_by: str = "character",
    rotations: bool = False,
    seed: int = 0,
    root: str | None = None,
    test_groups: Sequence[str] | None = None,
) -> DatasetSplit:
    """Omniglot characters as classes, split into disjoint train / test classes.

    Reads the layout `root/<alphabet>/<characterNN>/<id>_<drawer>.png`; by default the
    embedded subset of `images_background` (8 alphabets, 242 characters x 20 drawers).

    Args:
      test_fraction: fraction of the classes held out for testing, in [0, 1).
      split_by: "character": the characters are shuffled with
        `np.random.default_rng(seed)` and the first `round(test_fraction * C)` go to test.
        "alphabet": whole alphabets go to test (no alphabet on both sides): alphabets are
        shuffled with the seed and taken until at least `test_fraction` of the characters
        are in test.
      rotations: if True each character yields 4 classes, its copies rotated by 0, 90, 180
        and 270 degrees, named e.g. "Greek/character01/rot90". Rotated copies are split
        together with their character, so no glyph appears on both sides.
      seed: seed of the class split.
      root: dataset folder; None for the embedded subset.
      test_groups: names of the alphabets to hold out, e.g. ("Greek", "Latin"); overrides
        `test_fraction` and `split_by` (the cross-validation folds of `benchmarks/few_shot.py`).

    Returns:
      A `DatasetSplit` with `channels=1`; class names are "<alphabet>/<characterNN>".

    Raises:
      ValueError: bad `test_fraction`, `split_by` or `test_groups`, a missing `root`, or a
        split that leaves one side without classes.
    """
    paths, labels, class_names = _scan_class_folders(
        pathlib.Path(root) if root is not None else _OMNIGLOT_ROOT, class_depth=2
    )
    test_mask = _test_class_mask(class_names, test_fraction, split_by, test_groups, seed)
    train, test = _split(paths, labels, class_names, test_mask, test_fraction if test_groups is None else 1.0)
    if rotations:
        train = with_rotations(train)
        test = with_rotations(test) if test is not None else None
    return DatasetSplit(train=train, test=test, channels=1)


def load_folder(
    path: str,
    test_fraction: float = 0.5,
    seed: int = 0,
    channels: int = 3,
    validate: bool = True,
    split_by: str = "character",
    test_groups: Sequence[str] | None = None,
) -> DatasetSplit:
    """Any folder with one sub-folder per class, split into disjoint train / test classes.

    Every image (.png .jpg .jpeg .bmp .gif, any case) below `path` belongs to the class
    named by its parent folder relative to `path`, so nested layouts work:
    `path/birds/finch/1.jpg` is class "birds/finch". Images directly in `path` have no
    class and are ignored. Classes are sorted by name; the split shuffles them with
    `np.random.default_rng(seed)` and sends `round(test_fraction * C)` to test. With
    `split_by="alphabet"` whole top-level folders ("birds", an Omniglot alphabet) go to
    test instead, as `load_omniglot` does.

    Args:
      path: the dataset folder.
      test_fraction: fraction of the classes held out for testing, in [0, 1).
      seed: seed of the class split.
      channels: 1 (grayscale) or 3 (RGB), the channels images are decoded to.
      validate: if True every file is read once, its header checked against the
        PNG/JPEG/GIF/BMP magic numbers and decoded once with `decode_image`. A corrupt or
        undecodable file, or one over the pixel limit (`image_header.MAX_IMAGE_PIXELS`), is
        SKIPPED with a `logging.warning` naming it, rather than
        failing the whole load: one bad download should not cost a dataset, while a
        training pipeline hitting it later would crash mid-run. This costs one decode
        per image at load time; pass False for trusted data.
      split_by: "character" (each class on its own) or "alphabet" (top-level folders).
      test_groups: names of top-level folders to hold out; overrides `test_fraction`.

    Returns:
      A `DatasetSplit` with the given `channels`.

    Raises:
      ValueError: (naming `path`) the folder is missing, holds no images, or fewer than 2
        classes (after skipping corrupt files); or bad `test_fraction` / `channels`.
    """
    _check_channels(channels)
    if split_by not in _SPLIT_BY:  # Checked before the (slow) validation.
        raise ValueError(f"split_by must be one of {_SPLIT_BY}, got {split_by!r}")
    _check_test_fraction(test_fraction)
    paths, labels, class_names = _scan_class_folders(pathlib.Path(path), class_depth=None)
    if validate:
        ok = np.array([_is_decodable(p, channels)
                       for p in progress.bar(paths, desc=f"checking {path}", unit="file")], dtype=bool)
        paths, labels, class_names = _drop_classless(paths[ok], labels[ok], class_names)
    if len(class_names) < 2:
        raise ValueError(
            f"dataset folder {str(path)!r} has {len(class_names)} class(es) with valid images; "
            "metric learning needs at least 2"
        )
    test_mask = _test_class_mask(class_names, test_fraction, split_by, test_groups, seed)
    train, test = _split(paths, labels, class_names, test_mask, test_fraction if test_groups is None else 1.0)
    return DatasetSplit(train=train, test=test, channels=channels)


#: Named datasets: name -> loader(test_fraction=..., seed=..., **kwargs) -> DatasetSplit. A loader
#: registers itself (`DATASETS.register(name, loader)`); `pddm_tf.datasets` registers the TFDS ones
#: ("cub200", "cars196", "sop", ...) when imported, which `load_dataset` does lazily (importing TFDS
#: is slow). "folder:PATH" is handled apart since its name carries an argument.
DATASETS: Registry[Callable[..., DatasetSplit]] = Registry("dataset")
DATASETS.register("omniglot", load_omniglot)
_FOLDER_PREFIX = "folder:"


def load_dataset(name: str, test_fraction: float = 0.5, seed: int = 0, **kwargs) -> DatasetSplit:
    """Loads a dataset by name: "omniglot", "folder:PATH", a TFDS dataset of `pddm_tf.datasets`
    ("cub200", "cars196", "sop", "tfds_omniglot", "imagenet2012" and their aliases) or any loader
    registered in `DATASETS`.

    `kwargs` go to the loader (`load_omniglot` / `load_folder` / the registered loader).

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if name.startswith(_FOLDER_PREFIX) and name[len(_FOLDER_PREFIX) :]:
        return load_folder(name[len(_FOLDER_PREFIX) :], test_fraction, seed, **kwargs)
    if name not in DATASETS:
        import pddm_tf.datasets  # noqa: F401  Registers the TFDS loaders (lazily: it imports this module).
    if name not in DATASETS:
        known = ", ".join(repr(n) for n in [*DATASETS, _FOLDER_PREFIX + "PATH"])
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}")
    return DATASETS[name](test_fraction=test_fraction, seed=seed, **kwargs)


# --------------------------------------------------------------------------- decoding


def decode_image(
    encoded: tf.Tensor, image_size: int, channels: int, rotation: tf.Tensor | int = 0,
    max_pixels: int | None = None,
) -> tf.Tensor:
    """Decodes one image file's bytes for the network.

    Pure TF ops, so the SavedModel serving signature reuses it unchanged.

    Args:
      encoded: scalar tf.string, the bytes of a PNG, JPEG, GIF (first frame) or BMP file.
      image_size: side s of the square output; the image is resized without keeping its
        aspect ratio (bilinear, antialiased so that downscaling does not alias).
      channels: 1 (grayscale) or 3 (RGB) output channels c.
      rotation: number k of 90-degree counter-clockwise rotations, applied before resizing.
      max_pixels: images whose header declares more pixels (width x height) are refused before
        decoding (`image_header.check_pixel_limit`); None: `image_header.MAX_IMAGE_PIXELS` as it
        is when this runs (or is traced).

    Returns:
      [s, s, c] float32 in [0, 1].

    Raises:
      tf.errors.InvalidArgumentError: an image over the pixel limit (the message gives its size and
        the limit), of no known format, or that its decoder cannot read.
    """
    pixels = _decode_pixels(encoded, channels, rotation, _pixel_limit(max_pixels))
    return _resize(pixels, image_size)


def decode_images(encoded: tf.Tensor, image_size: int, channels: int,
                  transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
                  max_pixels: int | None = None) -> tf.Tensor:
    """Decodes a batch of image files: [n] tf.string -> [n, s, s, c] float32 in [0, 1].

    Without `transform`, each image is `decode_image`d (plain resize); with one (a deterministic
    evaluation transform such as `pipeline.eval_transform(s)`), it is applied to the full-size
    decoded image, as `evaluation_dataset(..., transform=...)` does.

    A batch holding bytes of no known image format, or an image whose header declares more than
    `max_pixels` pixels (None: `image_header.MAX_IMAGE_PIXELS`), fails as a whole, before any image
    is decoded, with an InvalidArgumentError naming the index of the first such image ("image 2 of
    the batch ...").
    """
    limit = _pixel_limit(max_pixels)

    def one(image_bytes: tf.Tensor) -> tf.Tensor:
        # The whole batch's headers are checked below, before the first decode.
        pixels = _decode_pixels(image_bytes, channels, max_pixels=None)
        if transform is None:
            return _resize(pixels, image_size)
        image = transform(pixels, tf.zeros([2], tf.int64))
        return tf.ensure_shape(tf.cast(image, tf.float32), [image_size, image_size, channels])

    known = image_format_known(encoded)
    first_unknown = tf.argmin(tf.cast(known, tf.int32), output_type=tf.int32)
    check = tf.debugging.Assert(tf.reduce_all(known), [tf.strings.format(
        "image {} of the batch (counting from 0) is not a PNG, JPEG, GIF or BMP file", first_unknown)])
    with tf.control_dependencies([check]):
        encoded = image_header.check_batch_pixel_limit(tf.identity(encoded), limit)
    return tf.map_fn(one, encoded,
                     fn_output_signature=tf.TensorSpec([image_size, image_size, channels], tf.float32))


def image_format_known(encoded: tf.Tensor) -> tf.Tensor:
    """Whether each of a batch of files starts like a PNG, JPEG, GIF or BMP file: [n] tf.string -> [n] bool.

    The signatures are those that folder datasets accept (`_MAGIC_NUMBERS`). A file can start
    right and still be damaged further on; that one fails in its decoder.
    """
    length = max(len(magic) for magic in _MAGIC_NUMBERS)
    # Padded so that every prefix below lies inside the string (substr refuses one past the end).
    prefixes = tf.strings.substr(tf.strings.join([encoded, tf.fill(tf.shape(encoded), "\0" * length)]), 0, length)
    known = tf.zeros(tf.shape(encoded), tf.bool)
    for magic in _MAGIC_NUMBERS:
        known |= tf.equal(tf.strings.substr(prefixes, 0, len(magic)), magic)
    return known


def read_image(path: tf.Tensor, image_size: int, channels: int, rotation: tf.Tensor | int = 0,
               max_pixels: int | None = None, transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
               seed: tf.Tensor | None = None) -> tf.Tensor:
    """Reads and decodes one image file: scalar path -> [s, s, c] float32 (the one image reader of
    the training, evaluation and embedding pipelines).

    Without `transform`: `decode_image` (rotated, resized to s x s, in [0, 1]). With one (a
    `pddm_tf.pipeline.Transform`, e.g. an augmentation or `pipeline.eval_transform(s)`):
    `transform(full-size decoded image rotated, seed)`, checked to be [s, s, c]; `seed` is its
    stateless seed [2] int64 (None: zeros, for a deterministic evaluation transform). Either way
    images over the pixel limit are refused as in `decode_image`.
    """
    if transform is None:
        return decode_image(tf.io.read_file(path), image_size, channels, rotation, max_pixels)
    seed = tf.zeros([2], tf.int64) if seed is None else seed
    image = transform(_decode_pixels(tf.io.read_file(path), channels, rotation, _pixel_limit(max_pixels)), seed)
    return tf.ensure_shape(tf.cast(image, tf.float32), [image_size, image_size, channels])


def _pixel_limit(max_pixels: int | None) -> int:
    """The pixel limit to apply: `max_pixels`, or the module default `image_header.MAX_IMAGE_PIXELS`."""
    return image_header.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels


def _resize(pixels: tf.Tensor, image_size: int) -> tf.Tensor:
    """[h, w, c] uint8 -> [s, s, c] float32 in [0, 1]: `decode_image` after decoding."""
    image = tf.image.convert_image_dtype(pixels, tf.float32)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
    # The resampling weights sum to 1 only up to float rounding: keep the promised range.
    return tf.clip_by_value(image, 0.0, 1.0)


def _decode(encoded: tf.Tensor, channels: int) -> tf.Tensor:
    """Scalar file bytes -> [h, w, channels] uint8/uint16 (first frame of an animation)."""
    return tf.io.decode_image(encoded, channels=channels, expand_animations=False)


# --------------------------------------------------------------------------- pipelines


# Which classes class_balanced_dataset samples (see its `small_classes` argument).
_SMALL_CLASSES = ("error", "cycle")
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
        Otherwise a `pddm_tf.pipeline.Transform` applied to each decoded full-size image
        (after its rotation) with a per-image seed derived from `seed` and the image's
        position in the stream, e.g. `pipeline.train_transform(s)`; it must return
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
    _check_balanced_batches(files, batch_classes, batch_per_class, small_classes)
    batch_size = batch_classes * batch_per_class
    shard_size = _shard_size(batch_size, shard)
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
        rows = rows.filter(lambda position, _: (position % batch_size) // shard_size == shard[0])
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
        images.batch(shard_size, drop_remainder=True)
        .prefetch(_AUTOTUNE)
    )


def _balanced_rows(labels: np.ndarray, num_classes: int, batch_classes: int, batch_per_class: int, seed: int,
                   small_classes: str, start_step: tf.Variable | None) -> tf.data.Dataset:
    """The row stream of `class_balanced_dataset`: (global row position, (row index, label)), pass after
    pass of `balanced_batch_indices`, from the batch `start_step` holds (0 if None)."""
    batch_size = batch_classes * batch_per_class
    min_class_size = 1 if small_classes == "error" else 2
    passes = _steps_per_pass(np.bincount(labels, minlength=num_classes), batch_classes, small_classes)
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

    return _from_step(start_step, rows_from)


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
    _check_balanced_counts(np.bincount(class_ids, minlength=len(classes)), tuple(str(c) for c in classes),
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


def _shard_size(batch_size: int, shard: tuple[int, int]) -> int:
    """Rows per shard of a batch; checks that `shard` = (i, n) cuts it into n equal slices."""
    index, count = shard
    if count < 1 or not 0 <= index < count or batch_size % count:
        raise ValueError(f"shard (index, count) = {shard} must have 0 <= index < count and count dividing the "
                         f"batch size {batch_size}")
    return batch_size // count


def _from_step(start_step: tf.Variable | None, dataset_from: Callable[[tf.Tensor], tf.data.Dataset]
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
        Otherwise a `pddm_tf.pipeline.Transform` applied to each decoded full-size image
        (after its rotation), e.g. `pipeline.eval_transform(s)` (shorter side to 8/7 s,
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


def steps_per_pass(files: ImageFiles, batch_classes: int, small_classes: str = "error") -> int:
    """Batches in one pass of `class_balanced_dataset`: E // batch_classes, E the eligible
    classes (every class with small_classes="error", those with >= 2 images with "cycle")."""
    return _steps_per_pass(np.bincount(files.labels, minlength=files.num_classes), batch_classes, small_classes)


def _steps_per_pass(counts: np.ndarray, batch_classes: int, small_classes: str) -> int:
    """`steps_per_pass` from the images per class, counts [C]."""
    if batch_classes < 1:
        raise ValueError(f"batch_classes must be >= 1, got {batch_classes}")
    if small_classes not in _SMALL_CLASSES:
        raise ValueError(f"small_classes must be one of {_SMALL_CLASSES}, got {small_classes!r}")
    if small_classes == "error":
        return len(counts) // batch_classes
    return int((counts >= 2).sum()) // batch_classes


def _decode_pixels(encoded: tf.Tensor, channels: int, rotation: tf.Tensor | int = 0,
                   max_pixels: int | None = None) -> tf.Tensor:
    """Scalar file bytes -> [h, w, c] uint8 at full size, rotated by k x 90 degrees
    counter-clockwise: `decode_image` before its resize. The header is first checked against
    `max_pixels` (None: no check here, the caller has made it)."""
    if max_pixels is not None:
        encoded = image_header.check_pixel_limit(encoded, max_pixels)
    if channels == 1:
        # TF's GIF and BMP decoders only emit RGB(A): decode those as RGB, then convert.
        is_rgb_only = tf.logical_or(
            tf.strings.substr(encoded, 0, 3) == "GIF", tf.strings.substr(encoded, 0, 2) == "BM"
        )
        image = tf.cond(
            is_rgb_only,
            lambda: tf.image.rgb_to_grayscale(_decode(encoded, channels=3)),
            lambda: _decode(encoded, channels=1),
        )
    else:
        image = _decode(encoded, channels)
    return tf.image.rot90(image, k=rotation)


def _check_balanced_batches(files: ImageFiles, batch_classes: int, batch_per_class: int, small_classes: str) -> None:
    """Raises ValueError if `class_balanced_dataset` cannot build P x K batches from `files`."""
    _check_balanced_counts(np.bincount(files.labels, minlength=files.num_classes), files.class_names,
                           batch_classes, batch_per_class, small_classes)


def _check_balanced_counts(counts: np.ndarray, class_names: tuple[str, ...], batch_classes: int,
                           batch_per_class: int, small_classes: str) -> None:
    """`_check_balanced_batches` from the images per class, counts [C], and the class names."""
    if small_classes not in _SMALL_CLASSES:
        raise ValueError(f"small_classes must be one of {_SMALL_CLASSES}, got {small_classes!r}")
    num_classes = len(counts)
    if num_classes < 2:
        raise ValueError(f"class-balanced batches need at least 2 classes, got {num_classes}")
    if small_classes == "cycle":
        num_eligible = int((counts >= 2).sum())
        if num_eligible < batch_classes:
            raise ValueError(
                f"only {num_eligible} classes have at least 2 images but batch_classes={batch_classes}"
            )
        skipped, cycled = int((counts < 2).sum()), int(((counts >= 2) & (counts < batch_per_class)).sum())
        if skipped or cycled:
            _logger.info("class-balanced sampling: %d single-image classes never sampled, %d classes with "
                         "fewer than %d images cycled", skipped, cycled, batch_per_class)
        return
    if num_classes < batch_classes:
        raise ValueError(f"only {num_classes} classes but batch_classes={batch_classes}")
    if (counts < batch_per_class).any():
        small = int(np.argmax(counts < batch_per_class))
        raise ValueError(
            f"class {class_names[small]!r} has {counts[small]} "
            f"image{'' if counts[small] == 1 else 's'} but batch_per_class={batch_per_class}"
        )


# --------------------------------------------------------------------------- helpers


def _check_test_fraction(test_fraction: float) -> None:
    if not 0 <= test_fraction < 1:  # Also rejects NaN.
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


def _scan_class_folders(
    root: pathlib.Path, class_depth: int | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Lists the images below `root`, classed by parent folder relative to `root`.

    Args:
      root: the dataset folder.
      class_depth: keep only class folders exactly this deep (2 for
        alphabet/character); None keeps every folder below `root`.

    Returns:
      paths [n] str sorted, labels [n] int32, class_names sorted.
    """
    if not root.is_dir():
        raise ValueError(f"dataset folder {str(root)!r} does not exist or is not a directory")
    images = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in _IMAGE_EXTENSIONS and p.parent != root and p.is_file()
    )
    classes = [p.parent.relative_to(root).as_posix() for p in images]
    if class_depth is not None:
        keep = [c.count("/") + 1 == class_depth for c in classes]
        images = [p for p, k in zip(images, keep) if k]
        classes = [c for c, k in zip(classes, keep) if k]
    if not images:
        raise ValueError(
            f"no images ({', '.join(sorted(_IMAGE_EXTENSIONS))}) in class sub-folders of {str(root)!r}"
        )
    class_names, labels = np.unique(np.array(classes), return_inverse=True)
    return np.array([str(p) for p in images]), labels.astype(np.int32), tuple(class_names)


def _is_decodable(path: str, channels: int) -> bool:
    """Whether `path` is an image file TF decodes; logs a warning naming it if not."""
    data = pathlib.Path(path).read_bytes()
    if not data.startswith(_MAGIC_NUMBERS):
        _logger.warning("skipping %s: not a PNG, JPEG, GIF or BMP file", path)
        return False
    try:
        # Same decoder as the pipeline; a 1x1 output keeps the check cheap.
        decode_image(tf.constant(data), image_size=1, channels=channels)
    except tf.errors.OpError as error:
        _logger.warning("skipping %s: cannot decode it (%s)", path, error.message)
        return False
    return True


def _drop_classless(
    paths: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Removes classes left without images and renumbers the labels contiguously."""
    present, labels = np.unique(labels, return_inverse=True)
    return paths, labels.astype(np.int32), tuple(class_names[i] for i in present)


def _test_class_mask(class_names: tuple[str, ...], test_fraction: float, split_by: str,
                     test_groups: Sequence[str] | None, seed: int) -> np.ndarray:
    """[C] bool, True for the held-out classes: `test_groups` by name, else a seeded random
    `test_fraction` of the classes (`split_by="character"`) or of whole groups ("alphabet")."""
    _check_test_fraction(test_fraction)
    if split_by not in _SPLIT_BY:
        raise ValueError(f"split_by must be one of {_SPLIT_BY}, got {split_by!r}")
    groups = np.array([name.split("/")[0] for name in class_names])
    if test_groups is not None:
        unknown = sorted(set(test_groups) - set(groups))
        if unknown:
            raise ValueError(f"unknown test group(s) {unknown}; the groups (top-level folders) are "
                             f"{sorted(set(groups))}")
        return np.isin(groups, list(test_groups))
    rng = np.random.default_rng(seed)
    if split_by == "character":
        return _random_class_mask(len(class_names), test_fraction, rng)
    return _random_group_mask(groups, test_fraction, rng)


def _random_class_mask(num_classes: int, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """[C] bool, True for the `round(test_fraction * C)` classes first in a random order."""
    mask = np.zeros(num_classes, dtype=bool)
    mask[rng.permutation(num_classes)[: round(test_fraction * num_classes)]] = True
    return mask


def _random_group_mask(groups: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """[C] bool over classes grouped by `groups` ([C] names): whole groups, taken in a
    random order until at least `test_fraction` of the classes are selected."""
    if test_fraction == 0:
        return np.zeros(len(groups), dtype=bool)
    names, group_of_class = np.unique(groups, return_inverse=True)
    order = rng.permutation(len(names))
    sizes = np.bincount(group_of_class)[order]
    num_taken = int(np.searchsorted(np.cumsum(sizes), test_fraction * len(groups))) + 1
    return np.isin(group_of_class, order[:num_taken])


def _split(
    paths: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    test_mask: np.ndarray,
    test_fraction: float,
) -> tuple[ImageFiles, ImageFiles | None]:
    """Train / test `ImageFiles` of the classes outside / inside `test_mask` ([C] bool)."""
    num_test = int(test_mask.sum())
    if num_test == len(class_names) or (test_fraction > 0 and num_test == 0):
        raise ValueError(
            f"test_fraction={test_fraction} puts {num_test} of {len(class_names)} classes in test; "
            "both train and test need at least one class"
        )
    train = _subset(paths, labels, class_names, ~test_mask)
    return train, (_subset(paths, labels, class_names, test_mask) if num_test else None)


def _subset(
    paths: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], keep: np.ndarray
) -> ImageFiles:
    """The files of the classes where `keep` ([C] bool) is True, relabelled 0..kept-1."""
    rows = keep[labels]
    new_label = np.cumsum(keep) - 1  # Old label -> rank among the kept classes.
    return ImageFiles(
        paths=paths[rows],
        labels=new_label[labels[rows]],
        class_names=tuple(name for name, k in zip(class_names, keep) if k),
        rotations=np.zeros(rows.sum(), dtype=np.int32),
    )


def with_rotations(files: ImageFiles) -> ImageFiles:
    """Each class c becomes classes 4c+k, its copies rotated by k * 90 degrees (k = 0..3),
    named "<class>/rot<90k>": the usual way to make more training classes from characters.

    Expects unrotated files; rows stay grouped by class.
    """
    if files.rotations.any():
        raise ValueError("with_rotations expects unrotated files; these are rotated already")
    k = np.repeat(np.arange(4, dtype=np.int32), len(files))
    labels = np.tile(files.labels, 4) * 4 + k
    order = np.argsort(labels, kind="stable")
    return ImageFiles(
        paths=np.tile(files.paths, 4)[order],
        labels=labels[order],
        class_names=tuple(f"{name}/rot{90 * r}" for name in files.class_names for r in range(4)),
        rotations=k[order],
    )
