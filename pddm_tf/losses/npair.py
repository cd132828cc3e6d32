"""Multi-class N-pair loss (Sohn, NIPS 2016)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.losses._base import EmbeddingLoss
from pddm_tf.miners import Tuples, npair_tuples
from pddm_tf.miners.mining import npair_pairs


@keras.saving.register_keras_serializable(package="pddm_tf")
class NPairLoss(EmbeddingLoss):
    """Multi-class N-pair loss: a softmax over the positives of N classes for every anchor.

    The N (anchor, positive) pairs come from the batch (`pddm_tf.miners.NPairMiner`): every class
    with at least two samples contributes its first two in batch order; other samples are unused.
    With a = anchors [N, d] and p = positives [N, d]:

        L = -1/N sum_i log( exp(a_i . p_i) / sum_j exp(a_i . p_j) )
            + l2_reg * (mean_i ||a_i||^2 + mean_i ||p_i||^2) / 4

    The regulariser is the one of TensorFlow's `npairs_loss`; on L2-normalised embeddings it is the
    constant l2_reg / 2, so it only matters for unnormalised ones. A batch with fewer than two such
    classes has no negative: N = 1 gives 0 (log 1), N = 0 gives 0 by convention.
    Usage: `loss(labels [m] int, embeddings [m, d]) -> scalar`.

    Args:
      l2_reg: weight of the squared-norm regulariser (Sohn uses 0.002 on unnormalised embeddings).
    """

    def __init__(self, l2_reg: float = 0.0, name: str = "npair_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if l2_reg < 0:
            raise ValueError(f"l2_reg must be non-negative, got {l2_reg}")
        self.l2_reg = float(l2_reg)

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        # NPairMiner's tuples, built from the labels alone: calling the miner would also compute the
        # batch's pairwise distances, which the N-pair pairing does not use.
        return self.from_indices(npair_tuples(npair_pairs(labels)), embeddings)

    def from_indices(self, tuples: Tuples, embeddings: tf.Tensor) -> tf.Tensor:
        """The loss of `NPairMiner`'s tuples (N^2 rows, row i N + j = (a_i, p_i, p_j)) of embeddings [m, d]."""
        return self.from_embeddings(tf.gather(embeddings, tuples.anchors), tf.gather(embeddings, tuples.positives),
                                    tf.gather(embeddings, tuples.negatives), tuples.groups)

    def from_embeddings(self, anchor: tf.Tensor, positive: tf.Tensor, candidate: tf.Tensor,
                        groups: tf.Tensor | int) -> tf.Tensor:
        """The loss of N anchors given as [N^2, d] rows in `NPairMiner`'s layout: row i N + j holds a_i,
        its positive p_i and its j-th candidate (p_j, or a synthetic negative built from it); the
        softmax of anchor i is over its N candidates, the target at j = i. groups = N."""
        n, dim = groups, tf.shape(anchor)[1]
        first = tf.range(n) * n  # the rows i N (not a [:, 0] slice, which fails for N = 0)
        anchors = tf.gather(anchor, first)
        candidates = tf.reshape(candidate, [n, n, dim])
        logits = tf.einsum("id,ijd->ij", anchors, candidates)  # [N, N], targets on the diagonal
        # Softmax cross-entropy written out: the fused op rejects the [0, 0] logits of N = 0.
        cross_entropy = tf.reduce_logsumexp(logits, axis=1) - tf.linalg.diag_part(logits)
        count = tf.maximum(tf.cast(n, anchor.dtype), 1.0)  # sums / count: 0, not NaN, for N = 0
        loss = tf.reduce_sum(cross_entropy) / count
        if self.l2_reg:
            squared_norms = tf.reduce_sum(tf.square(anchors)) + tf.reduce_sum(tf.square(tf.gather(positive, first)))
            loss += 0.25 * self.l2_reg * squared_norms / count
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "l2_reg": self.l2_reg}
