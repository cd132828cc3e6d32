"""Benchmark datasets from TensorFlow Datasets (TFDS), split by class for metric learning.

Loaders for CUB-200-2011, Cars196, Stanford Online Products, Omniglot and ImageNet 2012, each
returning a `pddm_tf.data.DatasetSplit` whose train and test classes are disjoint
(zero-shot retrieval / clustering protocol, METHODS.md section 5):

| name (alias)                       | TFDS builder             | train classes          | test classes            |
| ---------------------------------- | ------------------------ | ---------------------- | ----------------------- |
| "cub200" ("caltech_birds2011")     | caltech_birds2011        | TFDS labels 0-99       | TFDS labels 100-199     |
| "cars196"                          | cars196                  | TFDS labels 0-97       | TFDS labels 98-195      |
| "sop" ("stanford_online_products") | stanford_online_products | split "train"          | split "test"            |
| "tfds_omniglot"                    | omniglot                 | "train" (background)   | "test" (evaluation)     |
| "imagenet2012"                     | imagenet2012             | seeded class split     | seeded class split      |

TFDS labels are 0-based: CUB's TFDS labels 0-99 are the paper's classes 1-100, Cars' 0-97 its
1-98. CUB and Cars196 are split by image in TFDS, so their "train" and "test" splits are merged
and re-split by label. SOP and Omniglot already split by class. ImageNet: the 1000 classes are
shuffled with `np.random.default_rng(seed)` and the first `round(test_fraction * 1000)` are held
out; training uses the TFDS "train" images of the other classes, testing the "validation" images
(50 per class) of the held-out ones.

Labels are relabelled contiguously on each side: the classes present, in increasing TFDS label
order, become 0..C-1. `class_names` keep the TFDS names: the `ClassLabel` names (Cars196 model
names, ImageNet synsets, Omniglot "<alphabet>_<index>", SOP and CUB have numeric names), except
CUB, whose names are built like its folders, "<1-based id>.<label_name>", e.g.
"001.black_footed_albatross".

`test_fraction`: the split of CUB, Cars196, SOP and Omniglot is fixed by the benchmark protocol,
so any `test_fraction` in (0, 1) is ignored; `test_fraction=0` merges every class into training
(`test=None`), e.g. to train a final model on all data. ImageNet uses it as described above.

The images are extracted once to files (`pddm_tf.data.tfds_extract` says how and where).

Options shared by the loaders:
  data_dir: the TFDS data directory (None: TFDS's default, `$TFDS_DATA_DIR` or
    `~/tensorflow_datasets`).
  cache_dir: where the images are extracted (None: `<data_dir>/pddm_tf_files`); must be a local
    directory (atomic renames), so pass one when `data_dir` is remote (e.g. gs://).
  download: False (default) never downloads anything: data that TFDS has not prepared raise
    `DatasetNotPreparedError` saying what to do. True calls `download_and_prepare` when needed.
  manual_dir: where manually downloaded files are (None: `<data_dir>/downloads/manual`).
  channels: channels to decode with (None: 3, Omniglot 1).

Manual downloads.
  ImageNet 2012 cannot be downloaded by TFDS: register on https://image-net.org/download-images,
  put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into the manual directory
  (`<data_dir>/downloads/manual/` by default) and call the loader with `download=True`
  (and `manual_dir=...` for another directory).
  Cars196's official download is broken (its Stanford URLs are gone: tensorflow/datasets issues
  4932, 5053, 5656). A user who has the original files puts cars_train.tgz, cars_test.tgz,
  cars_test_annos_withlabels.mat and car_devkit.tgz, unextracted and under exactly these names,
  into the manual directory; TFDS then takes them from there instead of downloading them (it
  still verifies their registered sizes and sha256 checksums, so they must be the original
  archives, not repackaged copies). Prepare with
  `tfds.builder("cars196", data_dir=DATA_DIR).download_and_prepare(
  download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))`, or
  `load_cars196(data_dir=DATA_DIR, download=True, manual_dir=MANUAL_DIR)`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pddm_tf.data.files import DatasetSplit, ImageFiles
from pddm_tf.data.loaders import TFDS_NAMES
from pddm_tf.data.splits import check_channels, random_class_mask
from pddm_tf.data.tfds_extract import DatasetNotPreparedError, Extracted, TfdsSource, extract

_CUB = TfdsSource("caltech_birds2011", name_key="label_name")
_CARS = TfdsSource(
    "cars196",
    manual_files=("cars_train.tgz", "cars_test.tgz", "cars_test_annos_withlabels.mat", "car_devkit.tgz"),
    manual_note=(
        "TFDS cannot download cars196: its official Stanford URLs are broken (tensorflow/datasets issues "
        "#4932, #5053, #5656). If you have the original files, TFDS takes them from the manual directory "
        "instead of downloading them; they must be the original archives, unextracted, under exactly these "
        "names (TFDS checks their registered sha256 checksums)."
    ),
)
_SOP = TfdsSource("stanford_online_products", label_key="class_id")
_OMNIGLOT = TfdsSource("omniglot", channels=1)
_IMAGENET = TfdsSource(
    "imagenet2012",
    manual_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
    manual_note="ImageNet 2012 requires a manual download: register on https://image-net.org/download-images.",
)


# --------------------------------------------------------------------------- loaders


def load_cub200(
    test_fraction: float = 0.5,
    seed: int = 0,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    manual_dir: str | None = None,
    channels: int | None = None,
) -> DatasetSplit:
    """CUB-200-2011 (TFDS caltech_birds2011), train on classes 1-100, test on 101-200.

    TFDS's train and test splits (by image) are merged and re-split by label: TFDS labels 0-99
    train, 100-199 test (METHODS.md section 5), each side relabelled 0..C-1. Class names are
    "<1-based id>.<label_name>", e.g. "001.black_footed_albatross".

    Args:
      test_fraction: 0 trains on all 200 classes (`test=None`); other values in (0, 1) are ignored.
      seed: unused (the split is fixed); accepted for `load_dataset`.
      data_dir, cache_dir, download, manual_dir, channels: see the module docstring.

    Returns:
      A `DatasetSplit` with `channels` 3 unless given.

    Raises:
      DatasetNotPreparedError: the data is neither extracted nor prepared in TFDS (`download=False`).
      ValueError: a bad `test_fraction` or `channels`, or a side without images.
    """
    del seed  # The split is fixed by the benchmark protocol.
    channels = _channels(_CUB, channels)  # Checked before any extraction.
    _, parts = extract(_CUB, ("train", "test"), test_fraction, data_dir, cache_dir, download, manual_dir)
    return _split_by_label_threshold(_CUB, parts, 100, test_fraction, channels)


def load_cars196(
    test_fraction: float = 0.5,
    seed: int = 0,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    manual_dir: str | None = None,
    channels: int | None = None,
) -> DatasetSplit:
    """Cars196 (TFDS cars196), train on classes 1-98, test on 99-196.

    TFDS's train and test splits (by image) are merged and re-split by label: TFDS labels 0-97
    train, 98-195 test (METHODS.md section 5), each side relabelled 0..C-1; class names are
    TFDS's model names, e.g. "AM General Hummer SUV 2000".

    TFDS cannot download Cars196 (broken URLs); see the module docstring for preparing it from
    the original files with `manual_dir`.

    Args:
      test_fraction: 0 trains on all 196 classes (`test=None`); other values in (0, 1) are ignored.
      seed: unused (the split is fixed); accepted for `load_dataset`.
      data_dir, cache_dir, download, manual_dir, channels: see the module docstring.

    Returns:
      A `DatasetSplit` with `channels` 3 unless given.

    Raises:
      DatasetNotPreparedError: the data is neither extracted nor prepared; the message says where
        to put which files and how to prepare them.
      ValueError: a bad `test_fraction` or `channels`, or a side without images.
    """
    del seed  # The split is fixed by the benchmark protocol.
    channels = _channels(_CARS, channels)  # Checked before any extraction.
    _, parts = extract(_CARS, ("train", "test"), test_fraction, data_dir, cache_dir, download, manual_dir)
    return _split_by_label_threshold(_CARS, parts, 98, test_fraction, channels)


def load_sop(
    test_fraction: float = 0.5,
    seed: int = 0,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    manual_dir: str | None = None,
    channels: int | None = None,
) -> DatasetSplit:
    """Stanford Online Products (TFDS stanford_online_products), its own split by class.

    Training: the TFDS "train" split (Ebay_train, 11,318 classes, 59,551 images); test: "test"
    (Ebay_test, 11,316 classes, 60,502 images), METHODS.md section 5. The class is the `class_id`
    feature; each side is relabelled 0..C-1 and class names are the TFDS class ids ("0".."22633").

    Args:
      test_fraction: 0 trains on both splits' classes (`test=None`); other values in (0, 1) are ignored.
      seed: unused (the split is fixed); accepted for `load_dataset`.
      data_dir, cache_dir, download, manual_dir, channels: see the module docstring.

    Returns:
      A `DatasetSplit` with `channels` 3 unless given.

    Raises:
      DatasetNotPreparedError: the data is neither extracted nor prepared in TFDS (`download=False`).
      ValueError: a bad `test_fraction` or `channels`, a side without images, or a class in both
        TFDS splits (the protocol would be broken).
    """
    del seed  # The split is fixed by the benchmark protocol.
    channels = _channels(_SOP, channels)  # Checked before any extraction.
    _, parts = extract(_SOP, ("train", "test"), test_fraction, data_dir, cache_dir, download, manual_dir)
    return _split_by_tfds_split(_SOP, parts, test_fraction, channels)


def load_tfds_omniglot(
    test_fraction: float = 0.5,
    seed: int = 0,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    manual_dir: str | None = None,
    channels: int | None = None,
) -> DatasetSplit:
    """Full Omniglot (TFDS omniglot): background alphabets train, evaluation alphabets test.

    Training: the TFDS "train" split (images_background: 30 alphabets, 964 characters); test:
    "test" (images_evaluation: 20 other alphabets, 659 characters), the standard Omniglot split,
    so no alphabet is on both sides. The class is the character (`label`, 1623 in all); each side
    is relabelled 0..C-1 and class names are TFDS's "<alphabet>_<character index>". Unlike the
    embedded "omniglot" of `pddm_tf.data`, this is the whole dataset (32,460 images).

    Args:
      test_fraction: 0 trains on all 1623 characters (`test=None`); other values in (0, 1) are ignored.
      seed: unused (the split is fixed); accepted for `load_dataset`.
      data_dir, cache_dir, download, manual_dir, channels: see the module docstring.

    Returns:
      A `DatasetSplit` with `channels` 1 (the strokes are black on white) unless given.

    Raises:
      DatasetNotPreparedError: the data is neither extracted nor prepared in TFDS (`download=False`).
      ValueError: a bad `test_fraction` or `channels`, a side without images, or a character in
        both TFDS splits.
    """
    del seed  # The split is fixed by the Omniglot protocol.
    channels = _channels(_OMNIGLOT, channels)  # Checked before any extraction.
    _, parts = extract(_OMNIGLOT, ("train", "test"), test_fraction, data_dir, cache_dir, download, manual_dir)
    return _split_by_tfds_split(_OMNIGLOT, parts, test_fraction, channels)


def load_imagenet2012(
    test_fraction: float = 0.5,
    seed: int = 0,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    manual_dir: str | None = None,
    channels: int | None = None,
) -> DatasetSplit:
    """ImageNet 2012 (TFDS imagenet2012), a seeded split of its 1000 classes.

    The classes are shuffled with `np.random.default_rng(seed)` and the first
    `round(test_fraction * 1000)` are held out (the rule of `pddm_tf.data.load_omniglot`).
    Training: the TFDS "train" images of the other classes (about 1,300 each); test: the
    "validation" images of the held-out classes (50 each), which keeps retrieval evaluation
    tractable. Each side is relabelled 0..C-1; class names are WordNet synsets ("n01440764").
    Both TFDS splits are extracted whole (so the cache does not depend on the seed).

    Needs a manual download: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in the manual
    directory (`<data_dir>/downloads/manual/` by default), then `download=True` once.

    Args:
      test_fraction: fraction of the classes held out, in [0, 1); 0 trains on all 1000 classes
        (`test=None`, the validation split is not extracted).
      seed: seed of the class split.
      data_dir, cache_dir, download, manual_dir, channels: see the module docstring.

    Returns:
      A `DatasetSplit` with `channels` 3 unless given.

    Raises:
      DatasetNotPreparedError: the data is neither extracted nor prepared; the message names the
        files and the directory they go to.
      ValueError: a bad `test_fraction` or `channels`, or a side without images.
    """
    channels = _channels(_IMAGENET, channels)  # Checked before any extraction.
    splits = ("train",) if test_fraction == 0 else ("train", "validation")
    builder, parts = extract(_IMAGENET, splits, test_fraction, data_dir, cache_dir, download, manual_dir)
    names = _class_names(parts)
    num_classes = builder.info.features[_IMAGENET.label_key].num_classes
    held_out = random_class_mask(num_classes, test_fraction, np.random.default_rng(seed))
    train = parts[0]
    train_rows = ~held_out[train.labels]
    train_files = _image_files(train.paths[train_rows], train.labels[train_rows], names, "training", _IMAGENET)
    if test_fraction == 0:
        return DatasetSplit(train=train_files, test=None, channels=channels)
    validation = parts[1]
    test_rows = held_out[validation.labels]
    test_files = _image_files(validation.paths[test_rows], validation.labels[test_rows], names, "test", _IMAGENET)
    return DatasetSplit(train=train_files, test=test_files, channels=channels)


# Names `load_dataset` (and `load_tfds`) accept, aliases included.
TFDS_LOADERS: dict[str, Callable[..., DatasetSplit]] = {
    "cub200": load_cub200,
    "caltech_birds2011": load_cub200,
    "cars196": load_cars196,
    "sop": load_sop,
    "stanford_online_products": load_sop,
    "tfds_omniglot": load_tfds_omniglot,
    "imagenet2012": load_imagenet2012,
}
# `pddm_tf.data.loaders` registers these names without importing this module: keep the two equal.
if tuple(TFDS_LOADERS) != TFDS_NAMES:
    raise ImportError("pddm_tf.data.loaders.TFDS_NAMES is out of date: it must list TFDS_LOADERS' names")


def load_tfds(name: str, test_fraction: float = 0.5, seed: int = 0, **kwargs) -> DatasetSplit:
    """Loads a TFDS dataset by its name in `TFDS_LOADERS`; `kwargs` go to its loader.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if name not in TFDS_LOADERS:
        known = ", ".join(repr(n) for n in TFDS_LOADERS)
        raise ValueError(f"unknown TFDS dataset {name!r}; known TFDS datasets: {known}")
    return TFDS_LOADERS[name](test_fraction=test_fraction, seed=seed, **kwargs)


# --------------------------------------------------------------------------- class splits


def _split_by_label_threshold(
    source: TfdsSource, parts: list[Extracted], first_test_label: int, test_fraction: float, channels: int
) -> DatasetSplit:
    """Merges the TFDS splits and sends TFDS labels >= `first_test_label` to test."""
    names = _class_names(parts)
    paths = np.concatenate([part.paths for part in parts])
    labels = np.concatenate([part.labels for part in parts])
    if test_fraction == 0:
        return DatasetSplit(train=_image_files(paths, labels, names, "training", source), test=None, channels=channels)
    test_rows = labels >= first_test_label
    return DatasetSplit(
        train=_image_files(paths[~test_rows], labels[~test_rows], names, "training", source),
        test=_image_files(paths[test_rows], labels[test_rows], names, "test", source),
        channels=channels,
    )


def _split_by_tfds_split(
    source: TfdsSource, parts: list[Extracted], test_fraction: float, channels: int
) -> DatasetSplit:
    """TFDS "train" split for training, "test" for test; they must not share a class."""
    names = _class_names(parts)
    train, test = parts
    shared = np.intersect1d(train.labels, test.labels)
    if shared.size:
        raise ValueError(
            f"TFDS {source.tfds_name}: {shared.size} class(es) are in both the train and test splits "
            f"(e.g. {source.label_key}={shared[0]}); the class split would not be disjoint"
        )
    if test_fraction == 0:
        paths = np.concatenate([train.paths, test.paths])
        labels = np.concatenate([train.labels, test.labels])
        return DatasetSplit(train=_image_files(paths, labels, names, "training", source), test=None, channels=channels)
    return DatasetSplit(
        train=_image_files(train.paths, train.labels, names, "training", source),
        test=_image_files(test.paths, test.labels, names, "test", source),
        channels=channels,
    )


def _image_files(
    paths: np.ndarray, tfds_labels: np.ndarray, names: dict[int, str], side: str, source: TfdsSource
) -> ImageFiles:
    """`ImageFiles` of the given rows, the classes present relabelled 0..C-1 in TFDS label order."""
    if not len(paths):
        raise ValueError(f"TFDS {source.tfds_name}: no {side} images")
    classes, labels = np.unique(tfds_labels, return_inverse=True)
    return ImageFiles(
        paths=paths,
        labels=labels.reshape(-1),
        class_names=tuple(names[int(c)] for c in classes),
        rotations=np.zeros(len(paths), dtype=np.int32),
    )


def _class_names(parts: list[Extracted]) -> dict[int, str]:
    """TFDS label -> class name over all parts (the first part naming a label wins)."""
    names: dict[int, str] = {}
    for part in parts:
        for label, name in part.names.items():
            names.setdefault(label, name)
    return names


def _channels(source: TfdsSource, channels: int | None) -> int:
    """The decoding channels: `channels`, or the dataset's default when None."""
    channels = source.channels if channels is None else channels
    check_channels(channels)
    return channels


__all__ = ["TFDS_LOADERS", "DatasetNotPreparedError", "load_cars196", "load_cub200", "load_imagenet2012", "load_sop",
           "load_tfds", "load_tfds_omniglot"]
