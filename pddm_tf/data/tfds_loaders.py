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

How the images reach `ImageFiles`. TFDS stores the encoded images (PNG / JPEG bytes) inside
TFRecord files, while the library's pipelines read one file per image. The first call extracts
each TFDS split once: it streams the split without decoding the images
(`tfds.decode.SkipDecoding`) and writes every image's bytes, unchanged, to

    <cache_dir>/<tfds name>/<version>/<split>/<TFDS label, 5 digits>/<example index, 7 digits>.<png|jpg|gif|bmp>

Each file is written to a temporary name and renamed (`pddm_tf.atomic`), so a file under its final
name is always complete. The split's `index.tsv` (relative path, TFDS label, per-example class
name) is written the same way once the split is finished and its images are synced to disk: it is
the completion marker. Later
calls read the index and never touch TFDS; a split without index (an interrupted extraction) is
extracted again. Memory stays independent of the dataset size: one example is held at a time,
plus the list of paths and labels. Disk use is about the size of the TFDS data again (CUB 1.1 GB,
Cars196 1.9 GB, SOP 2.9 GB, Omniglot 20 MB, ImageNet 2012 about 150 GB).

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

import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from pddm_tf import atomic, progress
from pddm_tf.data.files import DatasetSplit, ImageFiles
from pddm_tf.data.loaders import DATASETS
from pddm_tf.data.splits import check_channels, check_test_fraction, random_class_mask

_logger = logging.getLogger(__name__)

_INDEX = "index.tsv"
_INDEX_HEADER = "# pddm_tf TFDS extraction v1: relative path, TFDS label, class name (tab-separated)\n"
# File extension of each encoded format, recognised by its leading bytes.
_FORMATS = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))
_DEFAULT_CACHE_SUBDIR = "pddm_tf_files"
_LOG_EVERY = 10_000


class DatasetNotPreparedError(FileNotFoundError):
    """The TFDS data a loader needs is not prepared (and `download=False`, or preparing failed)."""


@dataclasses.dataclass(frozen=True)
class _Source:
    """How to read one TFDS builder.

    Attributes:
      tfds_name: the TFDS builder name.
      label_key: the feature holding the class (`ClassLabel`).
      name_key: a per-example text feature naming the class, or None to use the `ClassLabel` names.
      channels: default decoding channels.
      manual_files: files a user must place in the manual directory (empty: TFDS downloads).
      manual_note: why and how, for the error message.
      image_key: the encoded image feature.
    """

    tfds_name: str
    label_key: str = "label"
    name_key: str | None = None
    channels: int = 3
    manual_files: tuple[str, ...] = ()
    manual_note: str = ""
    image_key: str = "image"


_CUB = _Source("caltech_birds2011", name_key="label_name")
_CARS = _Source(
    "cars196",
    manual_files=("cars_train.tgz", "cars_test.tgz", "cars_test_annos_withlabels.mat", "car_devkit.tgz"),
    manual_note=(
        "TFDS cannot download cars196: its official Stanford URLs are broken (tensorflow/datasets issues "
        "#4932, #5053, #5656). If you have the original files, TFDS takes them from the manual directory "
        "instead of downloading them; they must be the original archives, unextracted, under exactly these "
        "names (TFDS checks their registered sha256 checksums)."
    ),
)
_SOP = _Source("stanford_online_products", label_key="class_id")
_OMNIGLOT = _Source("omniglot", channels=1)
_IMAGENET = _Source(
    "imagenet2012",
    manual_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
    manual_note="ImageNet 2012 requires a manual download: register on https://image-net.org/download-images.",
)


@dataclasses.dataclass(frozen=True)
class _Extracted:
    """The extracted files of one TFDS split, in TFDS order.

    Attributes:
      paths: [n] str, absolute file paths.
      labels: [n] int64, TFDS labels.
      names: TFDS label -> class name, for the labels present.
    """

    paths: np.ndarray
    labels: np.ndarray
    names: dict[int, str]


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
    _, parts = _extract(_CUB, ("train", "test"), test_fraction, data_dir, cache_dir, download, manual_dir)
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
    _, parts = _extract(_CARS, ("train", "test"), test_fraction, data_dir, cache_dir, download, manual_dir)
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
    _, parts = _extract(_SOP, ("train", "test"), test_fraction, data_dir, cache_dir, download, manual_dir)
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
    _, parts = _extract(_OMNIGLOT, ("train", "test"), test_fraction, data_dir, cache_dir, download, manual_dir)
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
    builder, parts = _extract(_IMAGENET, splits, test_fraction, data_dir, cache_dir, download, manual_dir)
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
for _name, _loader in TFDS_LOADERS.items():
    DATASETS.register(_name, _loader)


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
    source: _Source, parts: list[_Extracted], first_test_label: int, test_fraction: float, channels: int
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
    source: _Source, parts: list[_Extracted], test_fraction: float, channels: int
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
    paths: np.ndarray, tfds_labels: np.ndarray, names: dict[int, str], side: str, source: _Source
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


def _class_names(parts: list[_Extracted]) -> dict[int, str]:
    """TFDS label -> class name over all parts (the first part naming a label wins)."""
    names: dict[int, str] = {}
    for part in parts:
        for label, name in part.names.items():
            names.setdefault(label, name)
    return names


def _channels(source: _Source, channels: int | None) -> int:
    """The decoding channels: `channels`, or the dataset's default when None."""
    channels = source.channels if channels is None else channels
    check_channels(channels)
    return channels


# --------------------------------------------------------------------------- extraction


def _extract(
    source: _Source,
    splits: tuple[str, ...],
    test_fraction: float,
    data_dir: str | None,
    cache_dir: str | None,
    download: bool,
    manual_dir: str | None,
) -> tuple[tfds.core.DatasetBuilder, list[_Extracted]]:
    """The builder and the files of each TFDS split, extracting the splits not yet in the cache.

    See the module docstring for the cache layout; TFDS is only read for missing splits.
    """
    check_test_fraction(test_fraction)
    builder = tfds.builder(source.tfds_name, data_dir=data_dir)
    if cache_dir:
        cache = pathlib.Path(cache_dir).expanduser()
    else:
        cache = pathlib.Path(data_dir or builder.data_dir_root).expanduser() / _DEFAULT_CACHE_SUBDIR
    # full_name is "<name>/<version>" (with the config between them, for builders that have one).
    roots = {split: cache / builder.info.full_name / split for split in splits}
    missing = [split for split in splits if not (roots[split] / _INDEX).is_file()]
    if missing:
        _ensure_prepared(builder, source, download, manual_dir)
        known_splits = builder.info.splits  # Empty when unknown (e.g. under tfds.testing.mock_data).
        absent = [split for split in missing if known_splits and split not in known_splits]
        if absent:
            raise DatasetNotPreparedError(
                f"TFDS {source.tfds_name!r} in {str(builder.data_dir_root)!r} was prepared without the split(s) "
                f"{absent} (it has {list(known_splits)}).\n{_instructions(builder, source, manual_dir)}"
            )
        for split in missing:
            _extract_split(builder, source, split, roots[split])
    return builder, [_read_index(roots[split]) for split in splits]


def _ensure_prepared(
    builder: tfds.core.DatasetBuilder, source: _Source, download: bool, manual_dir: str | None
) -> None:
    """Returns if TFDS has the data, prepares it if `download`, else raises `DatasetNotPreparedError`."""
    if builder.is_prepared():
        return
    if not download:
        raise DatasetNotPreparedError(
            f"dataset {source.tfds_name!r} (TFDS version {builder.version}) is not prepared in the TFDS "
            f"data_dir {str(builder.data_dir_root)!r}, and download=False.\n"
            f"{_instructions(builder, source, manual_dir)}"
        )
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    _logger.info("preparing TFDS %s in %s", source.tfds_name, builder.data_dir_root)
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as error:  # Re-raised with what the user can do about it.
        raise DatasetNotPreparedError(
            f"preparing TFDS {source.tfds_name!r} in {str(builder.data_dir_root)!r} failed: "
            f"{type(error).__name__}: {error}\n{_instructions(builder, source, manual_dir)}"
        ) from error
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"TFDS {source.tfds_name!r} is still not prepared in {str(builder.data_dir_root)!r} after "
            f"download_and_prepare.\n{_instructions(builder, source, manual_dir)}"
        )


def _instructions(builder: tfds.core.DatasetBuilder, source: _Source, manual_dir: str | None) -> str:
    """What a user does to prepare `source` (the end of the not-prepared errors)."""
    data_dir = str(builder.data_dir_root)
    if not source.manual_files:
        return (
            f"To prepare it, call the loader with download=True, or run "
            f"tfds.builder({source.tfds_name!r}, data_dir={data_dir!r}).download_and_prepare()."
        )
    manual = manual_dir or os.path.join(data_dir, "downloads", "manual")
    return (
        f"{source.manual_note}\nPut these files into the manual directory {manual!r}: "
        f"{', '.join(source.manual_files)}; then call the loader with download=True"
        f"{f', manual_dir={manual_dir!r}' if manual_dir else ''}, or run "
        f"tfds.builder({source.tfds_name!r}, data_dir={data_dir!r}).download_and_prepare("
        f"download_config=tfds.download.DownloadConfig(manual_dir={manual!r}))."
    )


def _extract_split(builder: tfds.core.DatasetBuilder, source: _Source, split: str, root: pathlib.Path) -> None:
    """Writes every image of one TFDS split under `root`, then its index (the completion marker).

    Streams the split with the images left encoded: one example in memory at a time. The index
    also records each row's class name, so a cached split needs nothing from TFDS.
    """
    features = {source.image_key: True, source.label_key: True}
    if source.name_key:
        features[source.name_key] = True
    # Only the needed features are parsed (CUB's segmentation masks are not); images stay encoded.
    decoders = tfds.decode.PartialDecoding(features, decoders={source.image_key: tfds.decode.SkipDecoding()})
    dataset = builder.as_dataset(
        split=split,
        decoders=decoders,
        shuffle_files=False,  # TFDS order, so an interrupted extraction is redone identically.
        read_config=tfds.ReadConfig(try_autocache=False),  # Never hold a small split in memory.
    )
    label_feature = builder.info.features[source.label_key]
    _logger.info("extracting TFDS %s split %r to %s", builder.info.full_name, split, root)
    root.mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}  # TFDS label -> class name; at most one entry per class.
    count = 0
    known = builder.info.splits[split].num_examples if split in builder.info.splits else None
    with atomic.replacing(root / _INDEX) as partial_index, open(partial_index, "w", encoding="utf-8") as index:
        index.write(_INDEX_HEADER)
        examples = progress.bar(dataset.as_numpy_iterator(), total=known or None,
                                desc=f"extracting {builder.info.full_name} {split}", unit="image")
        for count, example in enumerate(examples, start=1):
            encoded = example[source.image_key]
            label = int(example[source.label_key])
            if label not in names:
                (root / f"{label:05d}").mkdir(exist_ok=True)
                if source.name_key:
                    # The 1-based id keeps names unique and traceable to the paper's numbering.
                    names[label] = f"{label + 1:03d}.{example[source.name_key].decode('utf-8')}"
                else:
                    names[label] = label_feature.int2str(label)
            relative = f"{label:05d}/{count - 1:07d}{_extension(encoded, builder, split, count - 1)}"
            atomic.write_bytes(root / relative, encoded, durable=False)  # one fsync per image is slow
            index.write(f"{relative}\t{label}\t{_one_line(names[label])}\n")
            if count % _LOG_EVERY == 0:
                _logger.info("%s %s: %d images extracted", builder.info.full_name, split, count)
        atomic.sync_tree(root)  # every image is on disk before the index that lists them
    _logger.info("%s %s: %d images extracted, done", builder.info.full_name, split, count)


def _read_index(root: pathlib.Path) -> _Extracted:
    """The `_Extracted` files listed by `root`'s index."""
    paths, labels, names = [], [], {}  # type: list[str], list[int], dict[int, str]
    with open(root / _INDEX, encoding="utf-8") as index:
        for line in index:
            if line.startswith("#"):
                continue
            relative, label, name = line.rstrip("\n").split("\t")
            paths.append(str(root / relative))
            labels.append(int(label))
            names.setdefault(int(label), name)
    return _Extracted(paths=np.array(paths, dtype=str), labels=np.array(labels, dtype=np.int64), names=names)


def _extension(encoded: bytes, builder: tfds.core.DatasetBuilder, split: str, index: int) -> str:
    """The file extension of encoded image bytes; only formats `pddm_tf.data.decode_image` reads."""
    for magic, extension in _FORMATS:
        if encoded.startswith(magic):
            return extension
    raise ValueError(
        f"TFDS {builder.info.full_name} split {split!r} example {index}: the image is not PNG, JPEG, GIF or BMP "
        f"(first bytes {encoded[:8]!r})"
    )


def _one_line(text: str) -> str:
    """`text` fit for one TSV field."""
    return " ".join(text.replace("\t", " ").splitlines())
