"""Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import ElementLosses, PairLoss, finite_number
from pddm_tf.miners import Miner
from pddm_tf.reducers import Reducer


@keras.saving.register_keras_serializable(package="pddm_tf")
class ContrastiveLoss(PairLoss):
    """Contrastive loss on all pairs of a batch, by default on Euclidean distances D_ij = ||f_i - f_j||.

        l_ij = max(0, D_ij - pos_margin)^2   for positive pairs P (y_i = y_j, i != j)
        l_ij = max(0, neg_margin - D_ij)^2   for negative pairs N (y_i != y_j)
        L = reducer(l over P) + reducer(l over N)

    The per-element terms are the two sets of pair losses, each reduced on its own. The default
    reducer is `AvgNonZeroReducer` (as pytorch-metric-learning's): each half is averaged over its
    pairs with a non-zero loss, since averaging over all pairs would let the many easy negatives of
    a batch (|N| >> |P|) dilute the gradient to nothing as training progresses. A half with no
    non-zero pair contributes 0, so a batch without positive or negative pairs is not NaN.
    Squared hinges follow Hadsell et al.; margins are on the distance (unit embeddings: D in [0, 2]).
    With a similarity S (larger is closer, e.g. "cosine_similarity") the hinges are
    max(0, pos_margin - S) and max(0, S - neg_margin), and neg_margin < pos_margin is required.

    With a `miner`, P and N are the pairs its tuples name instead (P: every (anchor, positive),
    N: every (anchor, negative)); `from_indices` evaluates the pairs of given tuples.
    Usage: `loss(labels [m] int, embeddings [m, d] L2-normalised) -> scalar`; `ref_embeddings` /
    `ref_labels` pair the batch with a reference set instead of itself.

    Args:
      pos_margin: positive pairs closer than this cost nothing (0: pull all the way together).
      neg_margin: negative pairs farther than this cost nothing.
      distance: D, any `pddm_tf.distances` distance or similarity (default "euclidean"); the
        margins are on its scale.
      reducer: a `pddm_tf.reducers` reducer (default "avg_non_zero", today's behaviour).
      miner: None (all pairs), or a `pddm_tf.miners.Miner`, its registered name or config dict.
    """

    default_distance = "euclidean"
    default_reducer = "avg_non_zero"

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 0.5,
                 distance: str | dict[str, Any] | Distance | None = None,
                 miner: str | dict[str, Any] | Miner | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 name: str = "contrastive_loss", **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        self.pos_margin = finite_number("ContrastiveLoss", "pos_margin", pos_margin)
        self.neg_margin = finite_number("ContrastiveLoss", "neg_margin", neg_margin)
        if self.distance.larger_is_closer:
            if not self.neg_margin < self.pos_margin:
                raise ValueError(f"ContrastiveLoss on a similarity needs neg_margin < pos_margin, got "
                                 f"{neg_margin} and {pos_margin}")
        elif not 0.0 <= self.pos_margin < self.neg_margin:
            raise ValueError(f"need 0 <= pos_margin < neg_margin, got {pos_margin} and {neg_margin}")

    def pair_terms(self, matrix: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> dict[str, ElementLosses]:
        pull = tf.square(tf.nn.relu(self.distance.farther(matrix, self.pos_margin)))
        push = tf.square(tf.nn.relu(self.distance.farther(self.neg_margin, matrix)))
        return {"positive": ElementLosses(pull, positive), "negative": ElementLosses(push, negative)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pos_margin": self.pos_margin, "neg_margin": self.neg_margin}
