"""The gallery that an exported model's `search` signature retrieves from: ids and their embeddings.

A `Gallery` is built from image files (`embed_gallery`), a folder or a dataset's held-out images
(`load_gallery`, what `pddm-tf export --gallery` uses), embedded with the training pipeline's
decoding; `export_saved_model(..., gallery=...)` stores it in the SavedModel.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from pddm_tf import data, evaluation


@dataclasses.dataclass(frozen=True, eq=False)
class Gallery:
    """The items `search` retrieves: g embeddings and their string ids.

    Attributes:
      embeddings: [g, d] float32, the model's embeddings of the gallery images.
      ids: [g] str, user-supplied ids (e.g. file paths or product names) that `search` returns.
    """

    embeddings: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        embeddings = np.asarray(self.embeddings, dtype=np.float32)
        ids = np.asarray(self.ids, dtype=str)
        if embeddings.ndim != 2 or ids.ndim != 1 or len(ids) != len(embeddings) or len(ids) == 0:
            raise ValueError(f"a gallery needs [g, d] embeddings and [g] ids with g >= 1, got shapes "
                             f"{embeddings.shape} and {ids.shape}")
        object.__setattr__(self, "embeddings", embeddings)
        object.__setattr__(self, "ids", ids)


def embed_gallery(model: keras.Model, paths: Sequence[str], ids: Sequence[str], image_size: int, channels: int,
                  batch_size: int = 256,
                  transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None) -> Gallery:
    """Embeds image files with the training pipeline's decoding (and evaluation `transform`, if any):
    a `Gallery` of [g, d] embeddings and `ids`."""
    path_array = np.asarray(paths, dtype=str)
    files = data.ImageFiles(path_array, np.zeros(len(paths), np.int32), ("gallery",), np.zeros(len(paths), np.int32))
    return _embed_gallery_files(model, files, ids, image_size, channels, batch_size, transform)


def _embed_gallery_files(model: keras.Model, files: data.ImageFiles, ids: Sequence[str], image_size: int,
                         channels: int, batch_size: int,
                         transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None) -> Gallery:
    """`embed_gallery` of `files` (their rotations included)."""
    embeddings, _ = evaluation.embed_dataset(
        model, data.evaluation_dataset(files, image_size, channels, batch_size, transform=transform))
    return Gallery(embeddings, np.asarray(ids, dtype=str))


def load_gallery(model: keras.Model, spec: str, image_size: int, channels: int, *, test_fraction: float = 0.5,
                 seed: int = 0, batch_size: int = 256,
                 transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None, **dataset_kwargs) -> Gallery:
    """The gallery named by `spec`, embedded by `model`.

    Args:
      spec: "folder:PATH": every image file below PATH (any depth, sorted), id = its path relative
        to PATH; or a dataset name of `pddm_tf.data.load_dataset`: its held-out images (all of
        them when it has no held-out side), id = "<class name>/<file name>".
      test_fraction, seed, dataset_kwargs: for `load_dataset`.
      transform: the evaluation transform (as in `export_saved_model`), None = plain resize.
    """
    if spec.startswith("folder:"):
        root = pathlib.Path(spec[len("folder:"):])
        if not root.is_dir():
            raise ValueError(f"gallery folder {str(root)!r} does not exist or is not a directory")
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in data.IMAGE_EXTENSIONS)
        if not paths:
            raise ValueError(f"no images in gallery folder {str(root)!r}")
        return embed_gallery(model, [str(p) for p in paths], [p.relative_to(root).as_posix() for p in paths],
                             image_size, channels, batch_size, transform)
    split = data.load_dataset(spec, test_fraction=test_fraction, seed=seed, **dataset_kwargs)
    files = split.test if split.test is not None else split.train
    ids = [f"{files.class_names[label]}/{os.path.basename(path)}" for path, label in zip(files.paths, files.labels)]
    return _embed_gallery_files(model, files, ids, image_size, channels, batch_size, transform)
