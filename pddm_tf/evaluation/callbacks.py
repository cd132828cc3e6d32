"""Embedding a labelled dataset with a model, and `RetrievalEvaluation`, the callback that scores
held-out retrieval during `fit`."""

import weakref
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from pddm_tf import progress
from pddm_tf.evaluation._inputs import validate_ks
from pddm_tf.evaluation.retrieval import DEFAULT_KS, evaluate_retrieval

#: One inference graph per model (see `_inference`), dropped with the model.
_INFERENCE: "weakref.WeakKeyDictionary[keras.Model, Callable[[tf.Tensor], tf.Tensor]]" = weakref.WeakKeyDictionary()


def _inference(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """`model(images, training=False)` as a `tf.function`, traced once per model (and once more if the
    batch size changes): a batch then runs as one graph instead of layer by layer in eager mode, which
    removes the per-layer Python overhead (about half the forward time of `small_convnet` here)."""
    forward = _INFERENCE.get(model)
    if forward is None:
        # A weak reference: the function must not keep alive the model that keys it.
        owner = weakref.ref(model)

        def call(images: tf.Tensor) -> tf.Tensor:
            live = owner()
            assert live is not None  # the entry dies with its model
            return live(images, training=False)

        forward = tf.function(call, reduce_retracing=True)
        _INFERENCE[model] = forward
    return forward


def embed_dataset(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Embed a finite dataset of (images, labels) batches.

    The dataset is iterated once and each batch's embeddings and labels are kept together:
    a second pass (say, one for images, one for labels) would misalign them whenever the
    dataset reshuffles on every iteration.

    Args:
        model: a model whose call returns [batch, dim] embeddings; under a strategy it runs on
            this process's default device (`pddm_tf.training.distributed.embed_files` shards the work over
            every replica instead).
        dataset: finite tf.data.Dataset yielding (images, labels) batches.

    Returns:
        (embeddings [n, dim], labels [n]) as numpy arrays.
    """
    embeddings, labels = [], []
    batches = int(dataset.cardinality())
    for images, batch_labels in progress.bar(dataset, total=batches if batches >= 0 else None, desc="embedding",
                                             unit="batch"):
        # A direct call, not predict_on_batch: under a strategy with R replicas that would hand the
        # whole batch to every replica and concatenate R copies of its embeddings. An unbuilt model
        # is built by an eager call first, so that no variable is created inside the traced function.
        forward = _inference(model) if model.built else lambda x: model(x, training=False)
        embeddings.append(np.asarray(forward(images)))
        labels.append(np.asarray(batch_labels))
    if not embeddings:
        raise ValueError("dataset is empty")
    return np.concatenate(embeddings), np.concatenate(labels)


class RetrievalEvaluation(keras.callbacks.Callback):
    """Runs `evaluate_retrieval` on a held-out dataset at the end of training epochs.

    The figures are written into the epoch `logs` under `prefix` (e.g. "val_recall@1"), so
    History, the progress bar, EarlyStopping and ModelCheckpoint all see them; Keras runs
    user callbacks before its own History and progress bar.

    Args:
        dataset: finite tf.data.Dataset of (images, labels) batches; the model's
            `predict_on_batch` must map images to [batch, dim] embeddings.
        every: evaluate every `every` epochs, and always after the final epoch of `fit`.
        ks: the K values for Recall@K.
        prefix: prepended to each metric name in `logs`.
        chunk_size: queries per distance block, see `nearest_neighbors`.
        seed: k-means seed for NMI.

    Attributes:
        history: list of (epoch, metrics) for every evaluated epoch; epochs are 0-based,
            as Keras numbers them.
        last_embeddings, last_labels: the embeddings [n, d] and labels [n] of the latest evaluation.
    """

    def __init__(
        self,
        dataset: tf.data.Dataset,
        every: int = 1,
        ks: Sequence[int] = DEFAULT_KS,
        prefix: str = "val_",
        chunk_size: int = 1024,
        seed: int = 0,
    ):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be positive, got {every}")
        self.dataset = dataset
        self.every = every
        self.ks = validate_ks(ks)
        self.prefix = prefix
        self.chunk_size = chunk_size
        self.seed = seed
        self.history: list[tuple[int, dict[str, float]]] = []
        # The latest evaluation's embeddings [n, d] and labels [n] (e.g. for pddm_tf.training.tensorboard's pictures).
        self.last_embeddings: np.ndarray | None = None
        self.last_labels: np.ndarray | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        is_last = epoch + 1 == (self.params or {}).get("epochs")
        if (epoch + 1) % self.every != 0 and not is_last:
            return
        embeddings, labels = embed_dataset(self.model, self.dataset)
        metrics = evaluate_retrieval(
            embeddings, labels, ks=self.ks, chunk_size=self.chunk_size, seed=self.seed
        )
        self.history.append((epoch, metrics))
        self.last_embeddings, self.last_labels = embeddings, labels
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in metrics.items()})
