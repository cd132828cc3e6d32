"""SavedModel export in TF Serving's layout (`export_dir/<version>/`), written atomically.

The exported model loads with plain `tf.saved_model.load` (no pddm_tf import) and has signatures
(n queries, d the embedding size; every signature's method name is `tensorflow/serving/predict`):

* `serving_default`: `images` [n] tf.string (PNG/JPEG/GIF/BMP bytes) -> `embeddings` [n, d],
  decoded, resized and scaled exactly as in training (`pddm_tf.data.decode_image`). Before any
  image is decoded, every header is read (`pddm_tf.data.image_header`) and a batch holding an image of
  more than `max_image_pixels` pixels (width x height, fixed at export, 16 MP by default) is
  refused with an InvalidArgumentError naming the image, its size and the limit: a few hundred
  kilobytes that declare a huge image cannot take the server's memory. The limit is kept in the
  SavedModel as a variable (`tf.saved_model.load(path).max_image_pixels[0]`), and the image size and
  channels `embed_pixels` takes as two more (`image_geometry`; read them with `saved_model_geometry`).
* `embed_pixels`: `pixels` [n, s, s, c] float32 in [0, 1] -> `embeddings` [n, d].
* `pddm_similarity` (models with a PDDM unit): `embeddings_a`, `embeddings_b` [n, d] ->
  `scores` [n], the learned PDDM similarity of each pair (for client-side re-ranking).
* `search` (when a `Gallery` is given): `images` [n] tf.string -> the k nearest gallery items of
  each query by exact squared Euclidean search over the g gallery embeddings, which are stored
  in the SavedModel as variables (`gallery_embeddings` [g, d], `gallery_ids` [g] tf.string):
  `ids` [n, k] tf.string, `indices` [n, k] int64 (gallery rows), `distances` [n, k] float32
  (squared Euclidean) and `scores` [n, k] float32, the ranking score: -distance, or with
  PDDM re-ranking (`rerank` = R > 0) the PDDM score of the pair, after the Euclidean top-R
  shortlist was re-ordered by it (`pddm_tf.evaluation.rerank_shortlist`). k and R are fixed at
  export time (so REST and gRPC requests carry only the images); ties go to the lower gallery
  row (Euclidean) or keep the shortlist order (PDDM), as in `pddm_tf.evaluation`.

No request can end the serving process: every input is declared with an unknown shape and checked
in the graph before any kernel sees it (`pddm_tf.export._requests`). A wrong rank or static
dimension (`pixels` of another size or channel count than the export's, `images` that are not
a vector), NaN or inf values, pixels outside [0, 1] by more than 0.1, or `pddm_similarity` pairs of
unequal counts get an InvalidArgumentError naming the input. An empty batch is a valid request:
`[0, d]` embeddings, `[0, k]` search results.

`save_keras_model` / `load_keras_model` write and read the `.keras` file that `pddm-tf train
--save_model` produces and `pddm-tf export` consumes.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import pddm_tf
from pddm_tf import atomic, evaluation
from pddm_tf.data import decode_images, image_header
from pddm_tf.export import _requests
from pddm_tf.export.gallery import Gallery
from pddm_tf.models import EmbeddingModel

# embed_pixels accepts values this far outside the documented [0, 1] (a client's resampling may
# overshoot a little); far outside means pixels in 0-255 or garbage, which would embed silently.
_PIXEL_SLACK = 0.1


def next_version(export_dir: str | os.PathLike) -> int:
    """1 + the largest integer version folder in `export_dir` (1 when there is none)."""
    root = pathlib.Path(export_dir)
    versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


def image_geometry(model: keras.Model) -> tuple[int, int]:
    """(image size s, channels c) of a built `EmbeddingModel`, read from its backbone's input."""
    shape = model.backbone.input_shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] is None:
        raise ValueError(f"cannot infer a square image size from the backbone input shape {shape}; "
                         "pass image_size and channels")
    return int(shape[1]), int(shape[3])


def save_keras_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Saves `model` as a `.keras` file, atomically: `path` is either the old file or the whole new one.

    The file is written under a temporary `.keras` name in the same folder (Keras requires the
    extension) and renamed over `path`, so a reader never sees a half-written archive.
    """
    target = pathlib.Path(path)
    if target.suffix != ".keras":
        raise ValueError(f"a Keras model file must end in .keras, got {str(target)!r}")
    with atomic.replacing(target, suffix=".keras") as tmp:
        model.save(tmp, overwrite=True)
    return str(target)


def load_keras_model(path: str | os.PathLike) -> EmbeddingModel:
    """Loads a `.keras` file written by `save_keras_model` (or `model.save`), without its optimizer state.

    Raises:
      FileNotFoundError: no such path.
      ValueError: the file is not a readable `.keras` archive, or holds a model that is not a pddm_tf
        embedding model.
    """
    pddm_tf._import_all()  # registers the library's layers and models for deserialisation
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such path: {os.fspath(path)}")
    try:
        model = keras.saving.load_model(str(path), compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile.BadZipFile, ... for a bad file
        raise ValueError(f"cannot load the Keras model {os.fspath(path)}: {_first_line(error)}") from None
    if not isinstance(model, EmbeddingModel):
        raise ValueError(f"{os.fspath(path)} is not a pddm-tf model (it holds a {type(model).__name__}); "
                         "pddm-tf export needs the .keras file of pddm-tf train --save_model")
    return model


def load_saved_model(path: str | os.PathLike) -> tuple[pathlib.Path, dict[str, Any]]:
    """The signatures of a pddm_tf SavedModel: `path` is a version folder or a TF Serving base folder
    (then its highest version is loaded). Returns (version folder, signature name -> function).

    Raises:
      FileNotFoundError: no such path, or no SavedModel in it.
      ValueError: a corrupt SavedModel, or one without an `embed_pixels` signature (not a pddm-tf export).
    """
    root = pathlib.Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such path: {root}")
    folder = root
    if not (root / "saved_model.pb").exists():
        versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
        if not versions:
            raise FileNotFoundError(f"{root} holds neither a saved_model.pb nor version folders")
        folder = root / str(max(versions))
        if not (folder / "saved_model.pb").exists():
            raise FileNotFoundError(f"no saved_model.pb in {folder}, the latest version of {root}")
    try:
        signatures = tf.saved_model.load(str(folder)).signatures
    except Exception as error:  # a bad protobuf or missing variables surface as several error types
        raise ValueError(f"corrupt SavedModel at {folder}: {_first_line(error)}") from None
    if "embed_pixels" not in signatures:
        raise ValueError(f"not a pddm-tf export (no embed_pixels signature): {folder} has "
                         f"{sorted(signatures) or 'no signatures'}")
    return folder, dict(signatures)


def saved_model_geometry(folder: str | os.PathLike) -> tuple[int, int]:
    """(image size s, channels c) that the export in `folder` (a version folder) embeds: `embed_pixels`
    takes [n, s, s, c]. Read from its `image_geometry` variables, or, in an export written before they
    existed, from the signature's declared input shape."""
    loaded = tf.saved_model.load(str(folder))
    geometry = getattr(loaded, "image_geometry", None)
    if geometry is not None:
        return int(geometry[0].numpy()), int(geometry[1].numpy())
    _, _, size, channels = loaded.signatures["embed_pixels"].structured_input_signature[1]["pixels"].shape
    return int(size), int(channels)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _GalleryIndex(tf.Module):
    """The gallery as SavedModel variables, so `search` needs no side file (and no 2 GB graph constant)."""

    def __init__(self, gallery: Gallery) -> None:
        super().__init__(name="gallery")
        self.embeddings = tf.Variable(gallery.embeddings, trainable=False, name="gallery_embeddings")
        self.ids = tf.Variable(np.char.encode(gallery.ids, "utf-8"), trainable=False, name="gallery_ids")
        self.sq_norms = tf.Variable(np.sum(np.square(gallery.embeddings), axis=1), trainable=False,
                                    name="gallery_sq_norms")


def _pddm_similarity_fn(pddm: keras.layers.Layer, dim: int):
    """embeddings_a, embeddings_b [n, d] -> {"scores": [n]}, the pairs checked first (shape, equal n, finite)."""

    def pddm_similarity(embeddings_a: tf.Tensor, embeddings_b: tf.Tensor) -> dict[str, tf.Tensor]:
        a = _requests.checked_values(_requests.checked(embeddings_a, "embeddings_a", [None, dim]), "embeddings_a")
        b = _requests.checked_values(_requests.checked(embeddings_b, "embeddings_b", [None, dim]), "embeddings_b")
        same = tf.debugging.Assert(tf.equal(tf.shape(a)[0], tf.shape(b)[0]), [tf.strings.format(
            "embeddings_a and embeddings_b must hold as many rows, got {} and {}", (tf.shape(a)[0], tf.shape(b)[0]))])
        with tf.control_dependencies([same]):
            return {"scores": pddm((tf.identity(a), b))}

    return pddm_similarity


def _search_fn(embed, pddm: keras.layers.Layer | None, index: _GalleryIndex, k: int, rerank: int):
    """queries [n, d] -> the `search` outputs (see the module docstring)."""

    def search(queries: tf.Tensor) -> dict[str, tf.Tensor]:
        # The search kernel of pddm_tf.evaluation.nearest_neighbors; ties go to the lower gallery row.
        top, indices = evaluation.exact_top_k(queries, index.embeddings, max(k, rerank), index.sq_norms)  # [n, k or R]
        distances = tf.maximum(tf.reduce_sum(tf.square(queries), axis=1, keepdims=True) - top, 0.0)
        if rerank > 0:
            assert pddm is not None  # checked by the caller
            dim = tf.shape(queries)[1]
            a = tf.reshape(tf.repeat(queries[:, None, :], rerank, axis=1), [-1, dim])  # [n*R, d]
            b = tf.reshape(tf.gather(index.embeddings, indices), [-1, dim])  # [n*R, d]
            pair_scores = tf.reshape(pddm((a, b)), [-1, rerank])  # [n, R]
            # Stable sort: equal scores keep their Euclidean order, as rerank_shortlist does.
            order = tf.argsort(-pair_scores, axis=1, stable=True)[:, :k]
            indices = tf.gather(indices, order, batch_dims=1)
            distances = tf.gather(distances, order, batch_dims=1)
            scores = tf.gather(pair_scores, order, batch_dims=1)
        else:
            scores = -distances
        return {"ids": tf.gather(index.ids, indices), "indices": tf.cast(indices, tf.int64),
                "distances": distances, "scores": scores}

    return lambda images: search(embed(images))


def export_saved_model(model: EmbeddingModel, export_dir: str | os.PathLike, image_size: int, channels: int,
                       version: int | None = None, gallery: Gallery | None = None, search_k: int = 10,
                       rerank: int = 0, transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
                       max_image_pixels: int | None = None) -> str:
    """Writes `model` as version `version` (default: the next one) of a TF Serving model directory.

    The SavedModel is written into a temporary folder next to its destination and renamed into
    place, so a serving process polling `export_dir` never sees a half-written version, and an
    existing version is never overwritten.

    Args:
      model: a built embedding model.
      export_dir: the TF Serving base folder; the version folder is created inside it.
      image_size, channels: the decoding of `serving_default` and `search`, and `embed_pixels`' input.
      version: the version number (default: `next_version(export_dir)`).
      gallery: when given, adds the `search` signature over it.
      search_k: k, the neighbours `search` returns (clamped to the gallery size).
      rerank: R, re-rank the Euclidean top-R shortlist by the PDDM score (0 = off; needs a PDDM
        unit; clamped to the gallery size, and at least k).
      transform: the evaluation transform the model was evaluated with (e.g.
        `transforms.eval_transform(image_size)` after `--augment` training), applied by
        `serving_default` and `search` after decoding; None = plain resize (`decode_image`).
      max_image_pixels: `serving_default` and `search` refuse images whose header declares more
        pixels (width x height) before decoding them; None = `image_header.MAX_IMAGE_PIXELS`.

    Returns:
      The path of the new version folder.
    """
    max_image_pixels = image_header.MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, (int, np.integer)) \
            or max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be an integer >= 1, got {max_image_pixels!r}")
    max_image_pixels = int(max_image_pixels)
    root = pathlib.Path(export_dir)
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root) if version is None else int(version)
    target = root / str(version)
    if target.exists():
        raise FileExistsError(f"export version {target} already exists; versions are never overwritten")

    def embed(pixels: tf.Tensor) -> tf.Tensor:
        return model(pixels, training=False)

    def embed_images(images: tf.Tensor) -> tf.Tensor:
        images = _requests.checked(images, "images", [None], "a batch of encoded image files")
        return embed(decode_images(images, image_size, channels, transform, max_pixels=max_image_pixels))

    def embed_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = _requests.checked(pixels, "pixels", [None, image_size, image_size, channels],
                                   "float32 in [0, 1], the size and channels of this export")
        return {"embeddings": embed(_requests.checked_values(pixels, "pixels", -_PIXEL_SLACK, 1 + _PIXEL_SLACK))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    # Readable by clients and tools; the signatures use the value traced in as a constant.
    archive.add_variable_collection("max_image_pixels", [tf.Variable(max_image_pixels, dtype=tf.int64,
                                                                     trainable=False, name="max_image_pixels")])
    # The inputs are declared with an unknown shape (checked in the graph), so the image size and
    # channels that `embed_pixels` takes are kept here for clients (`saved_model_geometry`).
    archive.add_variable_collection("image_geometry", [tf.Variable(v, dtype=tf.int64, trainable=False, name=name)
                                                       for v, name in ((image_size, "image_size"),
                                                                       (channels, "channels"))])
    images_spec = _requests.spec(tf.string, "images")
    archive.add_endpoint("serving_default", lambda images: {"embeddings": embed_images(images)},
                         input_signature=[images_spec])
    archive.add_endpoint("embed_pixels", embed_pixels, input_signature=[_requests.spec(tf.float32, "pixels")])
    pddm = getattr(model, "pddm", None)
    if pddm is not None:
        archive.add_endpoint("pddm_similarity", _pddm_similarity_fn(pddm, model.embedding_dim),
                             input_signature=[_requests.spec(tf.float32, name)
                                              for name in ("embeddings_a", "embeddings_b")])
    if gallery is not None:
        size = len(gallery.ids)
        if search_k < 1 or rerank < 0:
            raise ValueError(f"search needs search_k >= 1 and rerank >= 0, got {search_k} and {rerank}")
        if rerank > 0 and pddm is None:
            raise ValueError("rerank > 0 needs a model with a PDDM unit")
        k = min(search_k, size)
        shortlist = max(min(rerank, size), k) if rerank > 0 else 0
        index = _GalleryIndex(gallery)
        archive.track(index)
        archive.add_endpoint("search", _search_fn(embed_images, pddm, index, k, shortlist),
                             input_signature=[images_spec])

    # Under the folder's lock, after removing the staging folders of killed exports (atomic.replacing_version).
    with atomic.replacing_version(target) as staging:
        archive.write_out(str(staging), verbose=False)
    return str(target)
