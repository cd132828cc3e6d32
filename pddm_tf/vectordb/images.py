"""The images of a folder embedded by an exported SavedModel, for a vector database.

`list_images(folder)` finds the image files below a folder (any depth, sorted) with what a gallery row
needs: the path relative to the folder (POSIX separators), its label (the parent folder's name, "" for a
file at the top) and its id (`milvus.file_id` of the relative path). `ExportedEmbedder(model_dir)` embeds
file bytes with the export's `serving_default` signature, i.e. decoded and resized in the graph exactly
as TF Serving would, and names the model (`ModelInfo`) for the collection.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from pddm_tf.data import IMAGE_EXTENSIONS
from pddm_tf.export import load_saved_model
from pddm_tf.vectordb.milvus import ModelInfo, file_id


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """One image below an indexed folder: `path` on disk, `relative` to the folder, `label`, row `id`."""

    path: pathlib.Path
    relative: str
    label: str
    id: int


def list_images(folder: str | os.PathLike) -> list[ImageFile]:
    """Every image file below `folder` (by extension, `pddm_tf.data.IMAGE_EXTENSIONS`), sorted by relative path.

    Raises:
      ValueError: `folder` is not a directory, or holds no images.
    """
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise ValueError(f"--images={os.fspath(folder)} is not a directory")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) below {os.fspath(folder)}")
    files = []
    for path in paths:
        relative = path.relative_to(root).as_posix()
        label = path.parent.name if path.parent != root else ""
        files.append(ImageFile(path, relative, label, file_id(relative)))
    return files


class ExportedEmbedder:
    """Embeds image files with a pddm-tf SavedModel export (`pddm_tf.export.load_saved_model`).

    Args:
      model_dir: a version folder, or a TF Serving base folder (its latest version).

    Attributes:
      info: the model's `ModelInfo`: name = the base folder's name, version = the version folder's
        name, dim = the embedding size, checksum = the SavedModel fingerprint's checksum.
    """

    def __init__(self, model_dir: str | os.PathLike) -> None:
        folder, signatures = load_saved_model(model_dir)
        self._serve = signatures["serving_default"]
        dim = int(self._serve.structured_outputs["embeddings"].shape[-1])
        try:
            checksum = str(tf.saved_model.experimental.read_fingerprint(str(folder)).saved_model_checksum)
        except (tf.errors.NotFoundError, ValueError, OSError):  # exports of TensorFlow < 2.12 have no fingerprint
            checksum = ""
        versioned = folder.name.isdigit()
        self.info = ModelInfo(folder.parent.name if versioned else folder.name, folder.name if versioned else "",
                              dim, checksum)

    def embed(self, files: Sequence[ImageFile]) -> tuple[np.ndarray, list[ImageFile]]:
        """(embeddings [m, d] float32, the m files embedded): a file that cannot be read or decoded (or that
        the export's pixel limit refuses) is skipped with a one-line warning naming it."""
        contents, readable = [], []
        for file in files:
            try:
                contents.append(file.path.read_bytes())
                readable.append(file)
            except OSError as error:
                logging.warning("skipped %s: %s", file.path, error.strerror or error)
        if not readable:
            return np.zeros((0, self.info.dim), np.float32), []
        try:
            return self._run(contents), readable
        except tf.errors.InvalidArgumentError:  # one bad image fails the batch: find it, keep the rest
            kept, rows = [], []
            for file, content in zip(readable, contents):
                try:
                    rows.append(self._run([content]))
                    kept.append(file)
                except tf.errors.InvalidArgumentError as error:
                    logging.warning("skipped %s: %s", file.path, error.message.strip().splitlines()[0])
            return (np.concatenate(rows) if rows else np.zeros((0, self.info.dim), np.float32)), kept

    def _run(self, contents: list[bytes]) -> np.ndarray:
        return self._serve(images=tf.constant(contents, dtype=tf.string))["embeddings"].numpy()
