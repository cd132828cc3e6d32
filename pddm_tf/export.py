"""SavedModel export in TF Serving's layout (`export_dir/<version>/`), written atomically.

The exported model loads with plain `tf.saved_model.load` (no pddm_tf import) and has signatures:

* `serving_default`: `images` [n] tf.string (PNG/JPEG/GIF/BMP bytes) -> `embeddings` [n, d],
  decoded, resized and scaled exactly as in training (`pddm_tf.data.decode_image`).
* `embed_pixels`: `pixels` [n, s, s, c] float32 in [0, 1] -> `embeddings` [n, d].
* `pddm_similarity` (models with a PDDM unit): `embeddings_a`, `embeddings_b` [n, d] ->
  `scores` [n], the learned PDDM similarity of each pair (for client-side re-ranking).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import keras
import tensorflow as tf

from pddm_tf.data import decode_images
from pddm_tf.models import EmbeddingModel


def next_version(export_dir: str | os.PathLike) -> int:
    """1 + the largest integer version folder in `export_dir` (1 when there is none)."""
    root = pathlib.Path(export_dir)
    versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


def export_saved_model(model: EmbeddingModel, export_dir: str | os.PathLike, image_size: int, channels: int,
                       version: int | None = None) -> str:
    """Writes `model` as version `version` (default: the next one) of a TF Serving model directory.

    The SavedModel is written into a temporary folder next to its destination and renamed into
    place, so a serving process polling `export_dir` never sees a half-written version, and an
    existing version is never overwritten.

    Returns:
      The path of the new version folder.
    """
    root = pathlib.Path(export_dir)
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root) if version is None else int(version)
    target = root / str(version)
    if target.exists():
        raise FileExistsError(f"export version {target} already exists; versions are never overwritten")

    pixel_spec = tf.TensorSpec([None, image_size, image_size, channels], tf.float32, name="pixels")

    def embed(pixels: tf.Tensor) -> tf.Tensor:
        return model(pixels, training=False)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda images: {"embeddings": embed(decode_images(images, image_size, channels))},
        input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    archive.add_endpoint("embed_pixels", lambda pixels: {"embeddings": embed(pixels)},
                         input_signature=[pixel_spec])
    pddm = getattr(model, "pddm", None)
    if pddm is not None:
        archive.add_endpoint(
            "pddm_similarity",
            lambda embeddings_a, embeddings_b: {"scores": pddm((embeddings_a, embeddings_b))},
            input_signature=[tf.TensorSpec([None, model.embedding_dim], tf.float32, name=name)
                             for name in ("embeddings_a", "embeddings_b")])

    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=root))
    try:
        archive.write_out(str(staging / "model"), verbose=False)
        os.replace(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
