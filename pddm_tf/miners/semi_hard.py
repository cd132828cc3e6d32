"""FaceNet's semi-hard negatives, one triplet per ordered positive pair."""

from __future__ import annotations

import tensorflow as tf

from pddm_tf.miners._base import Miner, Tuples
from pddm_tf.miners.mining import pair_masks, semi_hard_negatives


class SemiHardMiner(Miner):
    """Every ordered positive pair (a, p) whose anchor has a negative, with the closest negative
    farther than p, else the farthest negative (`pddm_tf.miners.mining.semi_hard_negatives`; Schroff et
    al., CVPR 2015). Rows in row-major (anchor, positive) order; groups = t.

    Example (points 0, 1 | 1.5, 3 on a line):
      >>> tuples = SemiHardMiner()(tf.constant([0, 0, 1, 1]), tf.constant([[0.0], [1.0], [1.5], [3.0]]))
      >>> tuples.rows().numpy().tolist()
      [[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]]
    """

    name = "semi_hard"

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        positive, _ = pair_masks(labels, ref_labels)
        negatives, has_negative = semi_hard_negatives(labels, distances, ref_labels)
        valid = positive & has_negative[:, None]
        pairs = tf.cast(tf.where(valid), tf.int32)
        return Tuples(pairs[:, 0], pairs[:, 1], tf.boolean_mask(negatives, valid), tf.shape(pairs)[0])
