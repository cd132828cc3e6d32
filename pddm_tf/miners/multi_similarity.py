"""The multi-similarity miner (Wang, Han, Huang, Dong & Scott, CVPR 2019), usable with any pair loss."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.miners._base import Tuples
from pddm_tf.miners._own_distance import OwnDistanceMiner, finite
from pddm_tf.miners.mining import pair_masks


class MultiSimilarityMiner(OwnDistanceMiner):
    """The pairs the multi-similarity loss mines (the paper's eq. 3-4), as pair-form `Tuples`, on a
    dissimilarity D (by default 1 - the cosine similarity, as pytorch-metric-learning's):

        keep the positive (a, p) if D_ap + epsilon > min_{n in N_a} D_an
        keep the negative (a, n) if D_an - epsilon < max_{p in P_a} D_ap

    (on the cosine: S_ap - epsilon < max S_an and S_an + epsilon > min S_ap). An anchor without a
    positive or a negative gives no pair.

    Args:
      epsilon: the mining margin (paper and pytorch-metric-learning: 0.1).
      distance: the miner's own distance (default "cosine_similarity"); None: the loss's.
    """

    name = "multi_similarity"
    supports_jit = False  # the number of pairs depends on the data

    def __init__(self, epsilon: float = 0.1,
                 distance: str | dict[str, Any] | Distance | None = "cosine_similarity") -> None:
        super().__init__(distance)
        self.epsilon = finite("MultiSimilarityMiner", "epsilon", epsilon)
        if self.epsilon < 0:
            raise ValueError(f"MultiSimilarityMiner: epsilon must be >= 0, got {epsilon}")

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        positive, negative = pair_masks(labels, ref_labels)
        inf = tf.constant(float("inf"), distances.dtype)
        closest_negative = tf.reduce_min(tf.where(negative, distances, inf), axis=1, keepdims=True)
        farthest_positive = tf.reduce_max(tf.where(positive, distances, -inf), axis=1, keepdims=True)
        # A missing side is +-inf here, so an anchor without negatives keeps no positive and vice versa.
        kept_positive = positive & (distances + self.epsilon > closest_negative)
        kept_negative = negative & (distances - self.epsilon < farthest_positive)
        a1, p = tf.unstack(tf.cast(tf.where(kept_positive), tf.int32), num=2, axis=1)
        a2, n = tf.unstack(tf.cast(tf.where(kept_negative), tf.int32), num=2, axis=1)
        return Tuples.from_pairs(a1, p, a2, n)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}
