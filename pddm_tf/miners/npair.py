"""The N-pair loss's pairs and candidates (Sohn, NIPS 2016)."""

from __future__ import annotations

import tensorflow as tf

from pddm_tf.miners._base import Miner, Tuples
from pddm_tf.miners.mining import npair_pairs


def npair_tuples(pairs: tf.Tensor) -> Tuples:
    """The `Tuples` layout of N (anchor, positive) pairs [N, 2]: row i N + j is (a_i, p_i, p_j)."""
    n = tf.shape(pairs)[0]
    return Tuples(tf.repeat(pairs[:, 0], n), tf.repeat(pairs[:, 1], n), tf.tile(pairs[:, 1], [n]), n)


class NPairMiner(Miner):
    """The N (anchor, positive) pairs of `pddm_tf.miners.mining.npair_pairs` (the first two samples of
    every class with two or more), each with all N positives as candidates: N^2 rows, anchor-major,
    row i N + j = (a_i, p_i, p_j); groups = N. Distances are not used.

    Example:
      >>> tuples = NPairMiner()(tf.constant([0, 0, 1, 1]), tf.zeros([4, 2]))
      >>> tuples.rows().numpy().tolist(), int(tuples.groups)
      ([[0, 1, 1], [0, 1, 3], [2, 3, 1], [2, 3, 3]], 2)
    """

    name = "npair"
    supports_ref = False

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        return npair_tuples(npair_pairs(labels))
