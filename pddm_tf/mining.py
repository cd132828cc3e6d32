"""Hard quadruplet mining (METHODS.md section 2) and the label masks every miner and loss shares.

All functions are pure TensorFlow, trace under `tf.function` and contain no Python loop over the
batch. A score matrix is a similarity (higher = more similar): the PDDM all-pairs scores, or
`euclidean_scores` (negative squared distances) for the Euclidean-mining ablation.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from pddm_tf.distances import pairwise_squared_distances

MINING_MODES = ("hardest", "per_pair")


class Quadruplets(NamedTuple):
    """Mined quadruplets (i, j, k, l): (i, j) a positive pair, k a negative of i, l a negative of j.

    Attributes:
      indices: [q, 4] int32 batch indices, q >= 0 (q = 0 when the batch has no valid quadruplet).
      num_candidates: scalar int32, how many quadruplets the miner looked for (1 for "hardest",
        the number of unordered positive pairs for "per_pair"); q / max(num_candidates, 1) is the
        fraction of valid quadruplets logged during training.
    """

    indices: tf.Tensor
    num_candidates: tf.Tensor

    @property
    def count(self) -> tf.Tensor:
        return tf.shape(self.indices)[0]

    def valid_fraction(self) -> tf.Tensor:
        """Fraction of the sought quadruplets that exist, as float32 in [0, 1]."""
        return tf.cast(self.count, tf.float32) / tf.cast(tf.maximum(self.num_candidates, 1), tf.float32)


def check_labels(labels: tf.Tensor) -> tf.Tensor:
    """Validates a label vector ([m] integers) and returns it as int32; raises a clear error otherwise."""
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype.name}")
    if labels.shape.rank is not None and labels.shape.rank != 1:
        raise ValueError(f"labels must have shape [batch], got shape {labels.shape}")
    return tf.cast(labels, tf.int32)


def pair_masks(labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Positive and negative pair masks of a batch.

    Args:
      labels: [m] integer class ids.
    Returns:
      (positive [m, m] bool: same label and i != j, negative [m, m] bool: different labels).
    """
    labels = check_labels(labels)
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def euclidean_scores(embeddings: tf.Tensor) -> tf.Tensor:
    """Similarity for Euclidean mining: -||f_i - f_j||^2, [m, d] -> [m, m]."""
    return -pairwise_squared_distances(embeddings)


def _masked_argmax(values: tf.Tensor, mask: tf.Tensor, axis: int) -> tf.Tensor:
    """argmax of `values` over the entries where `mask` holds (rows with no entry return 0)."""
    lowest = tf.fill(tf.shape(values), values.dtype.min)
    return tf.argmax(tf.where(mask, values, lowest), axis=axis, output_type=tf.int32)


def _hardest_negatives(scores: tf.Tensor, negative: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """For every anchor, the most similar negative and whether it has one: [m] int32, [m] bool."""
    return _masked_argmax(scores, negative, axis=1), tf.reduce_any(negative, axis=1)


def mine_quadruplets(labels: tf.Tensor, scores: tf.Tensor, mode: str = "hardest") -> Quadruplets:
    """Hard quadruplets from a similarity matrix (METHODS.md section 2).

    The hard negatives of a positive pair (i, j) are k = argmax_{y_k != y_i} S_ik and
    l = argmax_{y_l != y_j} S_jl. Only positive pairs whose two members both have a negative in the
    batch are eligible, so an anchor without positive or without negative never yields a quadruplet.

    Args:
      labels: [m] integer class ids.
      scores: [m, m] similarity matrix (higher = more similar), e.g. PDDM all-pairs scores or
        `euclidean_scores(embeddings)`. Gradients are not needed here; pass a stopped tensor.
      mode: "hardest": the paper's single quadruplet per batch, whose positive pair has the lowest
        similarity, (i^, j^) = argmin_{(i,j) in P} S_ij. "per_pair": one quadruplet for every
        unordered positive pair i < j.
    Returns:
      `Quadruplets` with indices [q, 4] (q <= 1 for "hardest").
    """
    if mode not in MINING_MODES:
        raise ValueError(f"unknown mining mode {mode!r}; expected one of {MINING_MODES}")
    labels = check_labels(labels)
    scores = tf.convert_to_tensor(scores)
    if scores.shape.rank is not None and scores.shape.rank != 2:
        raise ValueError(f"scores must be a [batch, batch] matrix, got shape {scores.shape}")
    positive, negative = pair_masks(labels)
    hard_negative, has_negative = _hardest_negatives(scores, negative)
    upper = tf.linalg.band_part(tf.ones_like(positive, dtype=tf.int32), 0, -1) > 0
    eligible = positive & upper & has_negative[:, None] & has_negative[None, :]
    num_positive_pairs = tf.reduce_sum(tf.cast(positive & upper, tf.int32))

    if mode == "hardest":
        m = tf.shape(scores)[0]
        highest = tf.fill(tf.shape(scores), scores.dtype.max)
        flat = tf.argmin(tf.reshape(tf.where(eligible, scores, highest), [-1]), output_type=tf.int32)
        pairs = tf.reshape(tf.stack([flat // m, flat % m]), [1, 2])
        # Keep the row only if a positive pair was eligible: q = 1 or 0, no dynamic Python branch.
        pairs = tf.boolean_mask(pairs, tf.reshape(tf.reduce_any(eligible), [1]))
        num_candidates = tf.constant(1, tf.int32)
    else:
        pairs = tf.cast(tf.where(eligible), tf.int32)
        num_candidates = num_positive_pairs
    i, j = pairs[:, 0], pairs[:, 1]
    indices = tf.stack([i, j, tf.gather(hard_negative, i), tf.gather(hard_negative, j)], axis=1)
    return Quadruplets(indices=indices, num_candidates=num_candidates)


def score_gap(labels: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    """Mean similarity of positive pairs minus mean similarity of negative pairs (0 if either is empty)."""
    positive, negative = pair_masks(labels)

    def masked_mean(mask: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(mask, scores.dtype)
        return tf.reduce_sum(scores * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

    return masked_mean(positive) - masked_mean(negative)
