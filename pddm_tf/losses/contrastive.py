"""Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import PairLoss, masked_mean
from pddm_tf.miners import Miner


@keras.saving.register_keras_serializable(package="pddm_tf")
class ContrastiveLoss(PairLoss):
    """Contrastive loss on all pairs of a batch, by default on Euclidean distances D_ij = ||f_i - f_j||.

        l_ij = max(0, D_ij - pos_margin)^2   for positive pairs P (y_i = y_j, i != j)
        l_ij = max(0, neg_margin - D_ij)^2   for negative pairs N (y_i != y_j)
        L = mean_{(i,j) in P, l_ij > 0} l_ij + mean_{(i,j) in N, l_ij > 0} l_ij

    Each half is averaged over its pairs with a non-zero loss (as pytorch-metric-learning's
    `AvgNonZeroReducer`): averaging over all pairs would let the many easy negatives of a batch
    (|N| >> |P|) dilute the gradient to nothing as training progresses. A half with no non-zero
    pair contributes 0, so a batch without positive or negative pairs is not NaN.
    Squared hinges follow Hadsell et al.; margins are on the distance (unit embeddings: D in [0, 2]).

    With a `miner`, P and N are the pairs its tuples name instead (P: every (anchor, positive),
    N: every (anchor, negative)); `from_indices` evaluates the pairs of given tuples.
    Usage: `loss(labels [m] int, embeddings [m, d] L2-normalised) -> scalar`.

    Args:
      pos_margin: positive pairs closer than this cost nothing (0: pull all the way together).
      neg_margin: negative pairs farther than this cost nothing.
      distance: D, a `pddm_tf.distances` name ("euclidean", "squared_euclidean", "cosine") or a
        registered `Distance`; the margins are on its scale.
      miner: None (all pairs), or a `pddm_tf.miners.Miner`, its registered name or config dict.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 0.5, distance: str | Distance = "euclidean",
                 miner: str | dict[str, Any] | Miner | None = None, name: str = "contrastive_loss",
                 **kwargs: Any) -> None:
        super().__init__(distance=distance, miner=miner, name=name, **kwargs)
        if not 0.0 <= pos_margin < neg_margin:
            raise ValueError(f"need 0 <= pos_margin < neg_margin, got {pos_margin} and {neg_margin}")
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def _from_masks(self, d: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tf.Tensor:
        pull = tf.square(tf.nn.relu(d - self.pos_margin))
        push = tf.square(tf.nn.relu(self.neg_margin - d))
        return masked_mean(pull, positive & (pull > 0)) + masked_mean(push, negative & (push > 0))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pos_margin": self.pos_margin, "neg_margin": self.neg_margin}
