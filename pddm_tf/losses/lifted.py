"""Lifted structured embedding loss (Song, Xiang, Jegelka & Savarese, CVPR 2016)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance, get_distance
from pddm_tf.losses._base import (
    EmbeddingLoss,
    masked_logsumexp,
    masked_mean,
    miner_config,
    optional_miner,
    tuple_pair_masks,
)
from pddm_tf.miners import Miner, Tuples
from pddm_tf.miners.mining import pair_masks


@keras.saving.register_keras_serializable(package="pddm_tf")
class LiftedStructuredLoss(EmbeddingLoss):
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
        super().__init__(name=name, **kwargs)
        if margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")
        self.margin = float(margin)
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
        row = masked_logsumexp(self.margin - d, negative, axis=1)  # [m]: log sum_{k in N(i)} exp(m - D_ik)
        rows = tf.broadcast_to(row[:, None], tf.shape(d))
        j = tf.reduce_logsumexp(tf.stack([rows, tf.transpose(rows)], axis=-1), axis=-1) + d
        # Over ordered pairs the sum doubles and |P| doubles: 1/(2|P|) sum_P = 0.5 * mean_ordered.
        valid = positive & tf.reduce_any(negative, axis=1)[:, None]
        return 0.5 * masked_mean(tf.square(tf.nn.relu(j)), valid)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "distance": self.distance.name,
                "miner": miner_config(self.miner)}
