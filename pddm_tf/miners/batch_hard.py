"""Batch-hard triplets: per anchor its farthest positive and closest negative."""

from __future__ import annotations

import tensorflow as tf

from pddm_tf.miners._base import Miner, Tuples
from pddm_tf.miners.mining import batch_hard_triplets


class BatchHardMiner(Miner):
    """One triplet per anchor that has a positive and a negative: its farthest positive and its
    closest negative (`pddm_tf.miners.mining.batch_hard_triplets`; Hermans, Beyer & Leibe, 2017). Rows in
    anchor order; groups = t.

    Example (points 0, 1 | 1.5, 3 on a line):
      >>> tuples = BatchHardMiner()(tf.constant([0, 0, 1, 1]), tf.constant([[0.0], [1.0], [1.5], [3.0]]))
      >>> tuples.rows().numpy().tolist()
      [[0, 1, 2], [1, 0, 2], [2, 3, 1], [3, 2, 1]]
    """

    name = "batch_hard"

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        positives, negatives, valid = batch_hard_triplets(labels, distances, ref_labels)
        anchors = tf.cast(tf.where(valid)[:, 0], tf.int32)
        return Tuples(anchors, tf.boolean_mask(positives, valid), tf.boolean_mask(negatives, valid),
                      tf.shape(anchors)[0])
