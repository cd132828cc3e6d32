"""Extracting a TFDS dataset's images to one file per image, once: what `pddm_tf.data.tfds_loaders` reads.

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
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from pddm_tf import atomic, progress
from pddm_tf.data.splits import check_test_fraction

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
class TfdsSource:
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


@dataclasses.dataclass(frozen=True)
class Extracted:
    """The extracted files of one TFDS split, in TFDS order.

    Attributes:
      paths: [n] str, absolute file paths.
      labels: [n] int64, TFDS labels.
      names: TFDS label -> class name, for the labels present.
    """

    paths: np.ndarray
    labels: np.ndarray
    names: dict[int, str]


def extract(
    source: TfdsSource,
    splits: tuple[str, ...],
    test_fraction: float,
    data_dir: str | None,
    cache_dir: str | None,
    download: bool,
    manual_dir: str | None,
) -> tuple[tfds.core.DatasetBuilder, list[Extracted]]:
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
    builder: tfds.core.DatasetBuilder, source: TfdsSource, download: bool, manual_dir: str | None
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


def _instructions(builder: tfds.core.DatasetBuilder, source: TfdsSource, manual_dir: str | None) -> str:
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


def _extract_split(builder: tfds.core.DatasetBuilder, source: TfdsSource, split: str, root: pathlib.Path) -> None:
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


def _read_index(root: pathlib.Path) -> Extracted:
    """The `Extracted` files listed by `root`'s index."""
    paths, labels, names = [], [], {}  # type: list[str], list[int], dict[int, str]
    with open(root / _INDEX, encoding="utf-8") as index:
        for line in index:
            if line.startswith("#"):
                continue
            relative, label, name = line.rstrip("\n").split("\t")
            paths.append(str(root / relative))
            labels.append(int(label))
            names.setdefault(int(label), name)
    return Extracted(paths=np.array(paths, dtype=str), labels=np.array(labels, dtype=np.int64), names=names)


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
