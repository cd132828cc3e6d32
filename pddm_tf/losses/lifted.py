"""Lifted structured embedding loss (Song, Xiang, Jegelka & Savarese, CVPR 2016)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import PairLoss, masked_logsumexp, masked_mean
from pddm_tf.miners import Miner


@keras.saving.register_keras_serializable(package="pddm_tf")
class LiftedStructuredLoss(PairLoss):
    """Lifted structured loss, the smooth version of Song et al. (eq. 4), by default on Euclidean distances.

        J_ij = log( sum_{k in N(i)} exp(m - D_ik) + sum_{l in N(j)} exp(m - D_jl) ) + D_ij
        L = 1 / (2|P|) * sum_{(i,j) in P} max(0, J_ij)^2

    P: unordered positive pairs, N(i): the negatives of i, D_ij = ||f_i - f_j||. The log of the
    sum is computed as logaddexp of the two per-row log-sum-exps (max-shifted, so large margins or
    many negatives cannot overflow). A batch without a positive pair or without a negative gives 0.
    With a `miner`, P is the (anchor, positive) pairs of its tuples (ordered, each counted once)
    and N(i) the negatives they name for anchor i; `from_indices` evaluates given tuples so.
    Usage: `loss(labels [m] int, embeddings [m, d] L2-normalised) -> scalar`.

    Args:
      margin: m, on distances (the paper uses 1).
      distance: D, a `pddm_tf.distances` name ("euclidean", "squared_euclidean", "cosine") or a
        registered `Distance`.
      miner: None (all pairs), or a `pddm_tf.miners.Miner`, its registered name or config dict.
    """

    def __init__(self, margin: float = 1.0, distance: str | Distance = "euclidean",
                 miner: str | dict[str, Any] | Miner | None = None, name: str = "lifted_structured_loss",
                 **kwargs: Any) -> None:
        super().__init__(distance=distance, miner=miner, name=name, **kwargs)
        if margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")
        self.margin = float(margin)

    def _from_masks(self, d: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tf.Tensor:
        row = masked_logsumexp(self.margin - d, negative, axis=1)  # [m]: log sum_{k in N(i)} exp(m - D_ik)
        rows = tf.broadcast_to(row[:, None], tf.shape(d))
        j = tf.reduce_logsumexp(tf.stack([rows, tf.transpose(rows)], axis=-1), axis=-1) + d
        # Over ordered pairs the sum doubles and |P| doubles: 1/(2|P|) sum_P = 0.5 * mean_ordered.
        valid = positive & tf.reduce_any(negative, axis=1)[:, None]
        return 0.5 * masked_mean(tf.square(tf.nn.relu(j)), valid)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}
