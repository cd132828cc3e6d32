"""Multi-class N-pair loss (Sohn, NIPS 2016)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.losses._base import EmbeddingLoss
from pddm_tf.mining import npair_pairs


@keras.saving.register_keras_serializable(package="pddm_tf")
class NPairLoss(EmbeddingLoss):
    """Multi-class N-pair loss: a softmax over the positives of N classes for every anchor.

    The N (anchor, positive) pairs come from the batch (`pddm_tf.mining.npair_pairs`): every class
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
        pairs = npair_pairs(labels)
        anchors, positives = tf.gather(embeddings, pairs[:, 0]), tf.gather(embeddings, pairs[:, 1])
        n = tf.shape(pairs)[0]
        logits = tf.matmul(anchors, positives, transpose_b=True)  # [N, N], targets on the diagonal
        # Softmax cross-entropy written out: the fused op rejects the [0, 0] logits of N = 0.
        cross_entropy = tf.reduce_logsumexp(logits, axis=1) - tf.linalg.diag_part(logits)
        count = tf.maximum(tf.cast(n, embeddings.dtype), 1.0)  # sums / count: 0, not NaN, for N = 0
        loss = tf.reduce_sum(cross_entropy) / count
        if self.l2_reg:
            squared_norms = tf.reduce_sum(tf.square(anchors)) + tf.reduce_sum(tf.square(positives))
            loss += 0.25 * self.l2_reg * squared_norms / count
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "l2_reg": self.l2_reg}
