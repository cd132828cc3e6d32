"""Lifted structured embedding loss (Song, Xiang, Jegelka & Savarese, CVPR 2016)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import (
    ElementLosses,
    EmbeddingLoss,
    LossBatch,
    finite_number,
    masked_logsumexp,
)
from pddm_tf.miners import Miner, Tuples
from pddm_tf.reducers import Reducer


@keras.saving.register_keras_serializable(package="pddm_tf")
class LiftedStructuredLoss(EmbeddingLoss):
    """Lifted structured loss, the smooth version of Song et al. (eq. 4), by default on Euclidean distances.

        J_ij = log( sum_{k in N(i)} exp(m - D_ik) + sum_{l in N(j)} exp(m - D_jl) ) + D_ij
        L = 1 / (2|P|) * sum_{(i,j) in P} max(0, J_ij)^2

    P: unordered positive pairs, N(i): the negatives of i, D_ij = ||f_i - f_j||. The log of the
    sum is computed as logaddexp of the two per-row log-sum-exps (max-shifted, so large margins or
    many negatives cannot overflow). A batch without a positive pair or without a negative gives 0.
    The per-element terms are max(0, J_ij)^2 over ordered positive pairs (each unordered pair twice),
    weighted 1/2 and reduced by `reducer`; the default `MeanReducer` gives the 1 / (2|P|) sum above.
    A similarity S (larger is closer) enters as the dissimilarity `Distance.to_dissimilarity(S)`.
    With a `miner`, P is the (anchor, positive) pairs of its tuples (ordered, each counted once)
    and N(i) the negatives they name for anchor i; `from_indices` evaluates given tuples so. With
    `ref_embeddings`, N(j) of a reference sample j is its negatives in the batch.
    Usage: `loss(labels [m] int, embeddings [m, d] L2-normalised) -> scalar`.

    Args:
      margin: m, on distances (the paper uses 1).
      distance: D, any `pddm_tf.distances` distance or similarity (default "euclidean").
      reducer: a `pddm_tf.reducers` reducer (default "mean", today's behaviour).
      miner: None (all pairs), or a `pddm_tf.miners.Miner`, its registered name or config dict.
    """

    default_distance = "euclidean"
    default_reducer = "mean"

    def __init__(self, margin: float = 1.0, distance: str | dict[str, Any] | Distance | None = None,
                 miner: str | dict[str, Any] | Miner | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 name: str = "lifted_structured_loss", **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        self.margin = finite_number("LiftedStructuredLoss", "margin", margin)
        if self.margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        positive, negative = batch.pair_masks() if tuples is None else batch.tuple_masks(tuples)
        d = self.distance.to_dissimilarity(batch.matrix)
        exponents = self.margin - d
        row = masked_logsumexp(exponents, negative, axis=1)  # [m]: log sum_{k in N(i)} exp(m - D_ik)
        has_negative = tf.reduce_any(negative, axis=1)
        if batch.has_ref:  # N(j) of reference sample j: its negatives in the batch (column j)
            other, other_has_negative = (masked_logsumexp(exponents, negative, axis=0),
                                         tf.reduce_any(negative, axis=0))
        else:  # j is a batch sample: N(j) is row j (a miner's negatives of anchor j)
            other, other_has_negative = row, has_negative
        shape = tf.shape(d)
        both = tf.stack([tf.broadcast_to(row[:, None], shape), tf.broadcast_to(other[None, :], shape)], axis=-1)
        j = tf.reduce_logsumexp(both, axis=-1) + d
        # Over ordered pairs the sum doubles and |P| doubles: 1/(2|P|) sum_P = 0.5 * mean_ordered.
        valid = positive & has_negative[:, None]
        if batch.has_ref:
            valid &= other_has_negative[None, :]
        return {"pair": ElementLosses(tf.square(tf.nn.relu(j)), valid, weight=0.5)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}
