"""Named datasets: the embedded Omniglot images, `folder:PATH`, and the `DATASETS` registry that
`load_dataset` looks names up in (with the TFDS datasets of `pddm_tf.data.tfds_loaders`, imported when
one is first loaded)."""

from __future__ import annotations

import importlib
import logging
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from pddm_tf import progress
from pddm_tf.data.decode import MAGIC_NUMBERS, decode_image
from pddm_tf.data.files import DatasetSplit, with_rotations
from pddm_tf.data.splits import SPLIT_BY, check_channels, check_test_fraction, split_classes, test_class_mask
from pddm_tf.registry import Registry

_logger = logging.getLogger(__name__)


_OMNIGLOT_ROOT = pathlib.Path(__file__).parent.parent / "_data" / "omniglot_background_small"


IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})


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
    test_mask = test_class_mask(class_names, test_fraction, split_by, test_groups, seed)
    train, test = split_classes(paths, labels, class_names, test_mask, test_fraction if test_groups is None else 1.0)
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
    check_channels(channels)
    if split_by not in SPLIT_BY:  # Checked before the (slow) validation.
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    check_test_fraction(test_fraction)
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
    test_mask = test_class_mask(class_names, test_fraction, split_by, test_groups, seed)
    train, test = split_classes(paths, labels, class_names, test_mask, test_fraction if test_groups is None else 1.0)
    return DatasetSplit(train=train, test=test, channels=channels)


#: Named datasets: name -> loader(test_fraction=..., seed=..., **kwargs) -> DatasetSplit. A loader
#: registers itself (`DATASETS.register(name, loader)`). "folder:PATH" is handled apart since its name
#: carries an argument.
DATASETS: Registry[Callable[..., DatasetSplit]] = Registry("dataset")
#: The names of `pddm_tf.data.tfds_loaders.TFDS_LOADERS` (aliases included), which checks it at import.
TFDS_NAMES: tuple[str, ...] = ("cub200", "caltech_birds2011", "cars196", "sop", "stanford_online_products",
                               "tfds_omniglot", "imagenet2012")


def _tfds_loader(name: str) -> Callable[..., DatasetSplit]:
    """The loader of a TFDS dataset, importing `pddm_tf.data.tfds_loaders` when first called: importing
    tensorflow_datasets takes seconds, which only a run on a TFDS dataset should pay."""

    def load(**kwargs) -> DatasetSplit:
        return importlib.import_module("pddm_tf.data.tfds_loaders").TFDS_LOADERS[name](**kwargs)

    load.__name__ = load.__qualname__ = f"load_{name}"
    return load


DATASETS.register("omniglot", load_omniglot)
for _name in TFDS_NAMES:
    DATASETS.register(_name, _tfds_loader(_name))


FOLDER_PREFIX = "folder:"


def load_dataset(name: str, test_fraction: float = 0.5, seed: int = 0, **kwargs) -> DatasetSplit:
    """Loads a dataset by name: "omniglot", "folder:PATH", a TFDS dataset of `pddm_tf.data.tfds_loaders`
    ("cub200", "cars196", "sop", "tfds_omniglot", "imagenet2012" and their aliases) or any loader
    registered in `DATASETS`.

    `kwargs` go to the loader (`load_omniglot` / `load_folder` / the registered loader).

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if name.startswith(FOLDER_PREFIX) and name[len(FOLDER_PREFIX) :]:
        return load_folder(name[len(FOLDER_PREFIX) :], test_fraction, seed, **kwargs)
    if name not in DATASETS:
        known = ", ".join(repr(n) for n in [*DATASETS, FOLDER_PREFIX + "PATH"])
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}")
    return DATASETS[name](test_fraction=test_fraction, seed=seed, **kwargs)


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
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.parent != root and p.is_file()
    )
    classes = [p.parent.relative_to(root).as_posix() for p in images]
    if class_depth is not None:
        keep = [c.count("/") + 1 == class_depth for c in classes]
        images = [p for p, k in zip(images, keep) if k]
        classes = [c for c, k in zip(classes, keep) if k]
    if not images:
        raise ValueError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in class sub-folders of {str(root)!r}"
        )
    class_names, labels = np.unique(np.array(classes), return_inverse=True)
    return np.array([str(p) for p in images]), labels.astype(np.int32), tuple(class_names)


def _is_decodable(path: str, channels: int) -> bool:
    """Whether `path` is an image file TF decodes; logs a warning naming it if not."""
    data = pathlib.Path(path).read_bytes()
    if not data.startswith(MAGIC_NUMBERS):
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
