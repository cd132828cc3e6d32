"""What every embedding loss shares: input validation, the label cast and the `EmbeddingLoss` base."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance, get_distance
from pddm_tf.miners import Miner, Tuples, get_miner, serialize_miner
from pddm_tf.miners.mining import check_labels, pair_masks

# Stand-in for -inf in masked log-sum-exps: exp(_MASKED - max) underflows to exactly 0 like -inf
# would, but a row with nothing left stays finite (log-sum-exp of -inf is -inf, whose gradient is NaN).
_MASKED = -1e9


def check_embeddings(embeddings: tf.Tensor, labels: tf.Tensor | None = None) -> tf.Tensor:
    """Validates a [m, d] float embedding batch (and its [m] labels); raises a clear error on NaN/inf.

    The NaN check is a `tf.debugging` assertion: it runs inside graphs too, and stops training with a
    message naming the problem instead of letting a NaN loss through.
    """
    embeddings = tf.convert_to_tensor(embeddings)
    if not embeddings.dtype.is_floating:
        raise TypeError(f"embeddings must be floating point, got dtype {embeddings.dtype.name}")
    if embeddings.shape.rank is not None and embeddings.shape.rank != 2:
        raise ValueError(f"embeddings must have shape [batch, dim], got shape {embeddings.shape}")
    if labels is not None:
        labels = check_labels(labels)
        if (embeddings.shape[0] is not None and labels.shape[0] is not None
                and embeddings.shape[0] != labels.shape[0]):
            raise ValueError(f"labels ({labels.shape[0]}) and embeddings ({embeddings.shape[0]}) "
                             "have different batch sizes")
    return tf.debugging.assert_all_finite(embeddings, "embeddings reaching the loss contain NaN or inf")


def labels_from_y_true(y_true: tf.Tensor) -> tf.Tensor:
    """Class ids [m] int32 from a Keras `y_true`.

    `keras.losses.Loss.__call__` has already cast y_true to the loss dtype (float); class ids are
    exact in float32 up to 2^24, so casting back is lossless.
    """
    y_true = tf.convert_to_tensor(y_true)
    if y_true.dtype.is_floating:
        y_true = tf.cast(y_true, tf.int32)
    return check_labels(y_true)


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of `values` where `mask` holds; 0 (not NaN, with zero gradient) when nothing does."""
    mask = tf.cast(mask, values.dtype)
    return tf.reduce_sum(values * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def masked_logsumexp(values: tf.Tensor, mask: tf.Tensor, axis: int = -1, with_one: bool = False) -> tf.Tensor:
    """log sum_{mask} exp(values) along `axis`, computed stably (max-shifted).

    With `with_one`, log(1 + sum_{mask} exp(values)) (a zero logit is added), which is 0 for an empty
    mask. Without it an empty row gives a very negative finite number; mask such rows out downstream.
    """
    values = tf.where(mask, values, tf.constant(_MASKED, values.dtype))
    if with_one:
        zeros = tf.zeros_like(tf.reduce_sum(values, axis=axis, keepdims=True))
        values = tf.concat([values, zeros], axis=axis)
    return tf.reduce_logsumexp(values, axis=axis)


def tuple_pair_masks(tuples: Tuples, batch_size: tf.Tensor | int) -> tuple[tf.Tensor, tf.Tensor]:
    """The pairs that index tuples name, as masks: (positive [m, m] bool, true at every (anchor,
    positive) of a row; negative [m, m] bool, true at every (anchor, negative)). A pair named by
    several rows is one pair. This is how a pair loss (contrastive, lifted structured, multi-
    similarity) reads a miner's tuples."""
    shape = tf.stack([batch_size, batch_size])
    ones = tf.ones_like(tuples.anchors)

    def mask(others: tf.Tensor) -> tf.Tensor:
        return tf.scatter_nd(tf.stack([tuples.anchors, others], axis=1), ones, shape) > 0

    return mask(tuples.positives), mask(tuples.negatives)


def loss_supports_jit(loss: Any) -> bool:
    """Whether XLA can compile a loss's computation: False when it mines with a miner that declares
    `supports_jit = False` (a data-dependent number of tuples, or draws without an XLA kernel)."""
    miner = getattr(loss, "miner", None)
    return bool(getattr(miner, "supports_jit", True))


def optional_miner(miner: str | dict[str, Any] | Miner | None) -> Miner | None:
    """`get_miner` for the pair losses' optional miner (None: the loss's own choice of pairs)."""
    return None if miner is None else get_miner(miner)


def miner_config(miner: Miner | None) -> dict[str, Any] | None:
    """The config entry of an optional miner (`serialize_miner`, or None)."""
    return None if miner is None else serialize_miner(miner)


class EmbeddingLoss(keras.losses.Loss):
    """Base of the losses on a batch of embeddings: `loss(labels [m], embeddings [m, d]) -> scalar`.

    `call` validates the inputs, recovers int labels from Keras' float y_true and hands over to
    `compute(labels, embeddings)`, which subclasses implement. The result is a scalar, so Keras'
    reduction leaves it unchanged.
    """

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels = labels_from_y_true(y_true)
        return self.compute(labels, check_embeddings(y_pred, labels))

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        """The loss of one batch: labels [m] int32, embeddings [m, d] -> float scalar."""
        raise NotImplementedError


class PairLoss(EmbeddingLoss):
    """Base of the losses on pairs of a batch under a `distance`: by default every pair (positive:
    same label, i != j; negative: different labels), or with a `miner` the pairs its tuples name
    (`tuple_pair_masks`). Subclasses implement `_from_masks(distances [m, m], positive [m, m] bool,
    negative [m, m] bool) -> scalar` and add their own arguments to `get_config`.
    """

    def __init__(self, distance: str | Distance = "euclidean", miner: str | dict[str, Any] | Miner | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.distance = get_distance(distance)
        self.miner = optional_miner(miner)

    @property
    def variables(self) -> list[keras.Variable]:
        """The miner's state, for the model to save."""
        return [] if self.miner is None else self.miner.variables

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        d = self.distance.pairwise(embeddings)
        if self.miner is not None:
            return self.from_indices(self.miner(labels, embeddings, d), distances=d)
        return self._from_masks(d, *pair_masks(labels))

    def from_indices(self, tuples: Tuples, embeddings: tf.Tensor | None = None,
                     distances: tf.Tensor | None = None) -> tf.Tensor:
        """The loss of the pairs that tuples name (`tuple_pair_masks`), from the batch's embeddings
        [m, d] or its distances [m, m]."""
        if distances is None:
            if embeddings is None:
                raise ValueError("from_indices needs the batch's embeddings or its distances")
            distances = self.distance.pairwise(embeddings)
        return self._from_masks(distances, *tuple_pair_masks(tuples, tf.shape(distances)[0]))

    def _from_masks(self, d: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "distance": self.distance.name, "miner": miner_config(self.miner)}
