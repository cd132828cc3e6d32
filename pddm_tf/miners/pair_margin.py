"""The pair-margin miner (pytorch-metric-learning's PairMarginMiner), usable with any pair loss."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.miners._base import Tuples
from pddm_tf.miners._own_distance import OwnDistanceMiner, finite
from pddm_tf.miners.mining import pair_masks


class PairMarginMiner(OwnDistanceMiner):
    """The pairs that violate a margin, as pair-form `Tuples`, on a dissimilarity D:

        positives (a, p) with D_ap > pos_margin,  negatives (a, n) with D_an < neg_margin

    (the pairs on which a contrastive loss with these margins is non-zero).

    Args:
      pos_margin, neg_margin: on D's scale (pytorch-metric-learning's defaults 0.2 and 0.8).
      distance: the miner's own distance; None (default): the loss's (Euclidean when called alone).
    """

    name = "pair_margin"
    supports_jit = False  # the number of pairs depends on the data

    def __init__(self, pos_margin: float = 0.2, neg_margin: float = 0.8,
                 distance: str | dict[str, Any] | Distance | None = None) -> None:
        super().__init__(distance)
        self.pos_margin = finite("PairMarginMiner", "pos_margin", pos_margin)
        self.neg_margin = finite("PairMarginMiner", "neg_margin", neg_margin)

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        positive, negative = pair_masks(labels, ref_labels)
        a1, p = tf.unstack(tf.cast(tf.where(positive & (distances > self.pos_margin)), tf.int32), num=2, axis=1)
        a2, n = tf.unstack(tf.cast(tf.where(negative & (distances < self.neg_margin)), tf.int32), num=2, axis=1)
        return Tuples.from_pairs(a1, p, a2, n)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pos_margin": self.pos_margin, "neg_margin": self.neg_margin}
