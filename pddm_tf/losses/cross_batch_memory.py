"""Cross-batch memory, XBM (Wang, Zhang, Huang & Scott, "Cross-Batch Memory for Embedding Learning", CVPR 2020)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.losses._base import EmbeddingLoss, LossBatch
from pddm_tf.losses._batch import labels_from_y_true
from pddm_tf.miners import Tuples


class _MemoryBatch(LossBatch):
    """A batch against the memory it was just written into: batch row i sits at memory row slots[i],
    which is the sample itself, not a positive of it."""

    def __init__(self, batch: LossBatch, slots: tf.Tensor) -> None:
        super().__init__(batch.labels, batch.embeddings, batch.distance, batch.ref_embeddings, batch.ref_labels)
        self.slots = slots

    def pair_masks(self) -> tuple[tf.Tensor, tf.Tensor]:
        positive, negative = super().pair_masks()
        itself = tf.equal(self.slots[:, None], tf.range(tf.shape(self.ref_labels)[0])[None, :])
        return positive & tf.logical_not(itself), negative


@keras.saving.register_keras_serializable(package="pddm_tf")
class CrossBatchMemory(keras.losses.Loss):
    """Any embedding loss, with the positives and negatives taken from a queue of past batches
    (METHODS.md section 10).

    Each call writes the batch's (stopped) embeddings and labels into a ring buffer of
    `memory_size` rows, overwriting the oldest, then evaluates `loss` with the batch as anchors and
    the memory's filled rows as its reference set (`ref_embeddings` / `ref_labels` of the loss
    contract), without the pair of a sample with its own copy in memory. Gradient flows into the
    anchors only, as in the paper and pytorch-metric-learning's `CrossBatchMemory` (which this
    follows: enqueue first, then compare). A loss with a miner mines against the memory too, and its
    tuples lose their self pairs.

    The memory is three non-trainable variables (`memory_embeddings` [memory_size, d],
    `memory_labels` [memory_size], `memory_position`, the number of rows ever written), which
    `MetricLossModel` tracks as model weights: they are saved in checkpoints and `.keras` files and
    restored on resume. Under a distribution strategy every replica computes the loss of the global
    batch (`gather_global_batch`) and writes the same rows: the variables are mirrored, and a write
    takes the first replica's value (aggregation ONLY_FIRST_REPLICA).

    Args:
      loss: the wrapped `EmbeddingLoss` (a pair or tuple loss: contrastive, multi-similarity,
        circle, ...) with its defaults by its snake-case name (multi_similarity for
        `MultiSimilarityLoss`), or its Keras config, or the object.
      embedding_size: d.
      memory_size: rows of the queue (the paper: a few thousand, e.g. 8192 on SOP; at least the
        batch size).
    """

    def __init__(self, loss: EmbeddingLoss | dict[str, Any], embedding_size: int, memory_size: int = 1024,
                 name: str = "cross_batch_memory", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if isinstance(loss, str):
            loss = _loss_by_name(loss)
        elif isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, EmbeddingLoss) or not loss.supports_ref:
            raise ValueError(f"CrossBatchMemory wraps an embedding loss that takes a reference set; got {loss!r}")
        for field, value in (("embedding_size", embedding_size), ("memory_size", memory_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CrossBatchMemory: {field} must be an integer >= 1, got {value!r}")
        self.loss, self.embedding_size, self.memory_size = loss, embedding_size, memory_size
        state = {"synchronization": "on_write", "aggregation": "only_first_replica", "trainable": False}
        self.memory_embeddings = keras.Variable(tf.zeros([memory_size, embedding_size]), name="memory_embeddings",
                                                **state)
        self.memory_labels = keras.Variable(tf.zeros([memory_size], tf.int32), dtype="int32", name="memory_labels",
                                            **state)
        self.memory_position = keras.Variable(0, dtype="int64", name="memory_position", **state)

    @property
    def variables(self) -> list[keras.Variable]:
        """The memory, then the wrapped loss's own state (its miner's, its proxies, ...)."""
        return [self.memory_embeddings, self.memory_labels, self.memory_position, *self.loss.variables]

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return self.compute(labels_from_y_true(y_true), y_pred)

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        """Enqueues the batch (labels [b], embeddings [b, d]) and returns the wrapped loss of the batch
        against the memory: a float scalar."""
        batch = LossBatch.checked(labels, embeddings, self.loss.distance)
        size = tf.shape(batch.labels)[0]
        check = tf.debugging.assert_less_equal(
            size, self.memory_size, message=f"CrossBatchMemory: the batch is larger than memory_size "
            f"({self.memory_size}); the memory must hold at least one batch")
        with tf.control_dependencies([check]):
            position = self.memory_position.value
        slots = tf.cast(tf.math.floormod(position + tf.range(tf.cast(size, tf.int64)), self.memory_size), tf.int32)
        stopped = tf.cast(tf.stop_gradient(batch.embeddings), self.memory_embeddings.dtype)
        rows = slots[:, None]
        self.memory_embeddings.assign(tf.tensor_scatter_nd_update(self.memory_embeddings.value, rows, stopped))
        self.memory_labels.assign(tf.tensor_scatter_nd_update(self.memory_labels.value, rows, batch.labels))
        self.memory_position.assign_add(tf.cast(size, tf.int64))
        filled = tf.cast(tf.minimum(self.memory_position.value, self.memory_size), tf.int32)
        reference = LossBatch(batch.labels, batch.embeddings, self.loss.distance,
                              tf.cast(self.memory_embeddings.value[:filled], batch.embeddings.dtype),
                              self.memory_labels.value[:filled])
        memory_batch = _MemoryBatch(reference, slots)
        tuples = self.loss.mine(memory_batch)
        if tuples is not None:
            tuples = _without_self_pairs(tuples, slots)
        return self.loss.reduce_terms(self.loss.compute_terms(memory_batch, tuples))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss),
                "embedding_size": self.embedding_size, "memory_size": self.memory_size}


def _loss_by_name(name: str) -> EmbeddingLoss:
    """The registered pddm_tf loss whose class name is `name` in snake case plus "Loss", with its defaults."""
    wanted = name.replace("_", "").lower() + "loss"
    for key, cls in keras.saving.get_custom_objects().items():
        if key.startswith("pddm_tf>") and cls.__name__.lower() == wanted and issubclass(cls, EmbeddingLoss):
            return cls()
    raise ValueError(f"CrossBatchMemory: no pddm_tf loss named {name!r}")


def _without_self_pairs(tuples: Tuples, slots: tf.Tensor) -> Tuples:
    """`tuples` without the rows whose positive is the anchor's own copy in memory (slots[anchor])."""
    keep = tf.not_equal(tuples.positives, tf.gather(slots, tuples.anchors))
    if tuples.is_pairs:
        assert tuples.negative_anchors is not None
        return Tuples.from_pairs(tf.boolean_mask(tuples.anchors, keep), tf.boolean_mask(tuples.positives, keep),
                                 tuples.negative_anchors, tuples.negatives)
    return Tuples.from_triplets(tf.boolean_mask(tuples.anchors, keep), tf.boolean_mask(tuples.positives, keep),
                                tf.boolean_mask(tuples.negatives, keep))
