"""TensorBoard logging of metric-learning training: scalars, a retrieval grid, the Embedding Projector.

`TensorBoard(log_dir, evaluation)` is a Keras callback that writes event files with TensorFlow's
own `tf.summary.write` and the scalar and image plugins' metadata, so writing needs no `tensorboard`
package (`tf.summary.scalar` and `tf.summary.image` do; TensorFlow 2.21 no longer installs it).
`pip install tensorboard` to view them. It writes:

* `<log_dir>/train`: every numeric entry of the epoch logs (loss and the method's terms, e.g.
  metric_loss, embedding_loss, valid_fraction, score_gap), at step = epoch (0-based, as Keras), and
  with `update_freq=N` also every N batches (tags `batch_<name>`, step = the optimiser's step);
* `<log_dir>/held_out`: at each epoch the `evaluation.RetrievalEvaluation` callback evaluated, its
  metrics (recall@K, nmi, map@r, r_precision) and the image `retrieval`, a grid of queries and their
  nearest held-out items framed green (same class) or red (`visualize.retrieval_grid`);
* when training ends, the Embedding Projector files of the last evaluation (`write_projector`).

Put the `RetrievalEvaluation` before this callback in the `fit` callbacks: it writes its figures
into the epoch logs that this callback reads.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from pddm_tf import atomic
from pddm_tf.evaluation import RetrievalEvaluation, visualize

#: The projector's largest sprite side in pixels.
MAX_SPRITE_SIZE = 8192


class TensorBoard(keras.callbacks.Callback):
    """Writes training scalars, held-out metrics and retrieval grids, and the projector files (see module).

    Args:
      log_dir: the TensorBoard log folder (created).
      evaluation: the `RetrievalEvaluation` of the same `fit`, or None (then only training scalars).
      load_images: held-out item indices [m] -> images [m, s, s, c] in [0, 1], in the evaluation
        dataset's order (e.g. `visualize.load_file_images(files, s, c)`); None: no grid, no sprite.
      class_names: label -> name, for the projector's metadata.
      num_queries, k: rows and neighbours of the retrieval grid; seed: which queries.
      update_freq: "epoch", or N to also write the batch logs every N batches.
      projector: write the projector files when training ends.
      max_points: the projector shows at most this many held-out items (drawn at random, `seed`).
    """

    def __init__(self, log_dir: str | os.PathLike, evaluation: RetrievalEvaluation | None = None,
                 load_images: Callable[[np.ndarray], np.ndarray] | None = None,
                 class_names: Sequence[str] | None = None, num_queries: int = 8, k: int = 5, seed: int = 0,
                 update_freq: str | int = "epoch", projector: bool = True, max_points: int = 10_000) -> None:
        super().__init__()
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq >= 1):
            raise ValueError(f"update_freq must be 'epoch' or a positive integer, got {update_freq!r}")
        self.log_dir = pathlib.Path(log_dir)
        self.evaluation = evaluation
        self.load_images = load_images
        self.class_names = class_names
        self.num_queries, self.k, self.seed = num_queries, k, seed
        self.update_freq = update_freq
        self.projector = projector
        self.max_points = max_points
        self._writers: dict[str, Any] = {}
        self._evaluations_seen = 0
        self._batches = 0

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches += 1
        if not isinstance(self.update_freq, int) or self._batches % self.update_freq or not logs:  # int: not "epoch"
            return
        step = int(self.model.optimizer.iterations.numpy()) if self.model.optimizer is not None else self._batches
        _write_scalars(self._writer("train"), {f"batch_{name}": value for name, value in logs.items()}, step)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        prefix = self.evaluation.prefix if self.evaluation is not None else None
        held_out = {name[len(prefix):]: value for name, value in logs.items() if prefix and name.startswith(prefix)}
        train = {name: value for name, value in logs.items() if not (prefix and name.startswith(prefix))}
        _write_scalars(self._writer("train"), train, epoch)
        evaluation = self.evaluation
        if evaluation is not None and len(evaluation.history) > self._evaluations_seen:
            self._evaluations_seen = len(evaluation.history)
            _write_scalars(self._writer("held_out"), held_out or evaluation.history[-1][1], epoch)
            # (an evaluation has run, so its embeddings and labels are set)
            if self.load_images is not None and evaluation.last_embeddings is not None \
                    and evaluation.last_labels is not None:
                grid = retrieval_grid_of(evaluation.last_embeddings, evaluation.last_labels,
                                         self.load_images, self.num_queries, self.k, self.seed)
                _write_image(self._writer("held_out"), "retrieval", grid, epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        evaluation = self.evaluation
        if self.projector and evaluation is not None and evaluation.last_embeddings is not None \
                and evaluation.last_labels is not None:
            self.write_projector_of(evaluation.last_embeddings, evaluation.last_labels)
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def write_projector_of(self, embeddings: np.ndarray, labels: np.ndarray) -> list[int]:
        """`write_projector` into this callback's log folder, with its images, class names and limits."""
        return write_projector(self.log_dir, embeddings, labels, self.load_images, self.class_names,
                               self.max_points, self.seed)


def _metadata(plugin: str, data_class: int) -> summary_pb2.SummaryMetadata:
    """What tensorboard's `summary.scalar` / `summary.image` attach: the plugin name, its (version 0,
    empty) plugin data and the data class."""
    metadata = summary_pb2.SummaryMetadata(data_class=data_class)
    metadata.plugin_data.plugin_name = plugin
    metadata.plugin_data.content = b""
    return metadata


_SCALAR = _metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
_IMAGE = _metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)


def _write_scalars(writer, values: dict[str, Any], step: int) -> None:
    """Writes every numeric scalar of `values` as a TensorBoard scalar."""
    with writer.as_default():
        for name, value in values.items():
            array = np.asarray(value)
            if array.size == 1 and np.issubdtype(array.dtype, np.number):
                tf.summary.write(name, tf.constant(float(array.reshape(())), tf.float32), step=step,
                                 metadata=_SCALAR)


def _write_image(writer, name: str, image: np.ndarray, step: int) -> None:
    """Writes an [H, W, 3] float image in [0, 1] as a TensorBoard image (PNG, as tensorboard's summary.image)."""
    pixels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
    payload = tf.stack([tf.as_string(tf.shape(pixels)[1]), tf.as_string(tf.shape(pixels)[0]),
                        tf.io.encode_png(pixels)])  # [width, height, png]
    with writer.as_default():
        tf.summary.write(name, payload, step=step, metadata=_IMAGE)


def retrieval_grid_of(embeddings: np.ndarray, labels: np.ndarray, load_images: Callable[[np.ndarray], np.ndarray],
                      num_queries: int = 8, k: int = 5, seed: int = 0) -> np.ndarray:
    """The `visualize.retrieval_grid` [H, W, 3] of `num_queries` queries (drawn with `seed`) and their k
    nearest other items."""
    queries, neighbours, hits = visualize.retrieval_examples(embeddings, labels, num_queries, k, seed)
    images = np.asarray(load_images(np.concatenate([queries, neighbours.reshape(-1)])), np.float32)
    return visualize.retrieval_grid(images[:len(queries)],
                                    images[len(queries):].reshape(neighbours.shape + images.shape[1:]), hits)


def write_projector(log_dir: str | os.PathLike, embeddings: np.ndarray, labels: np.ndarray,
                    load_images: Callable[[np.ndarray], np.ndarray] | None = None,
                    class_names: Sequence[str] | None = None, max_points: int = 10_000, seed: int = 0,
                    tensor_name: str = "held_out") -> list[int]:
    """Writes the Embedding Projector files of embeddings [n, d] with labels [n] under `log_dir`.

    `<log_dir>/projector/embeddings.tsv` (one row per item), `metadata.tsv` (header `label\\tclass`),
    `sprite.png` (if `load_images`: the items' images in rows of ceil(sqrt(m)) tiles, shrunk so the
    sprite stays within 8192 pixels), and `<log_dir>/projector_config.pbtxt` pointing at them.
    Items beyond `max_points` are left out (a random subset, `seed`, kept in order).

    Returns:
      The indices of the items written, in order.
    """
    root = pathlib.Path(log_dir)
    folder = root / "projector"
    folder.mkdir(parents=True, exist_ok=True)
    embeddings, labels = np.asarray(embeddings, np.float32), np.asarray(labels)
    rows = np.arange(len(embeddings))
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), max_points, replace=False))
    atomic.write_text(folder / "embeddings.tsv",
                "".join("\t".join(f"{v:.7g}" for v in row) + "\n" for row in embeddings[rows]))
    names = [class_names[label] if class_names is not None else str(label) for label in labels[rows]]
    atomic.write_text(folder / "metadata.tsv", "label\tclass\n" + "".join(
        f"{label}\t{' '.join(str(name).split())}\n" for label, name in zip(labels[rows], names)))
    sprite = ""
    if load_images is not None:
        images = np.asarray(load_images(rows), np.float32)
        per_row = math.ceil(math.sqrt(len(rows)))
        size = min(images.shape[1], MAX_SPRITE_SIZE // per_row)
        if size != images.shape[1]:
            images = tf.image.resize(images, (size, size), method="area").numpy()
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        tiles = np.ones((per_row * per_row, size, size, 3), np.float32)  # white after the last item
        tiles[:len(images)] = images
        grid = tiles.reshape(per_row, per_row, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(
            per_row * size, per_row * size, 3)
        pixels = tf.cast(tf.round(tf.clip_by_value(grid, 0.0, 1.0) * 255.0), tf.uint8)
        atomic.write_bytes(folder / "sprite.png", tf.io.encode_png(pixels).numpy())
        sprite = (f'  sprite {{\n    image_path: "projector/sprite.png"\n    single_image_dim: {size}\n'
                  f'    single_image_dim: {size}\n  }}\n')
    atomic.write_text(root / "projector_config.pbtxt",
                f'embeddings {{\n  tensor_name: "{tensor_name}"\n  tensor_path: "projector/embeddings.tsv"\n'
                f'  metadata_path: "projector/metadata.tsv"\n{sprite}}}\n')
    return rows.tolist()


