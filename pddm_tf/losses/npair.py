"""Multi-class N-pair loss (Sohn, NIPS 2016)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import (
    ElementLosses,
    EmbeddingLoss,
    LossBatch,
    finite_number,
)
from pddm_tf.miners import Miner, Tuples, npair_tuples
from pddm_tf.miners.mining import npair_pairs
from pddm_tf.reducers import Reducer


@keras.saving.register_keras_serializable(package="pddm_tf")
class NPairLoss(EmbeddingLoss):
    """Multi-class N-pair loss: a softmax over the positives of N classes for every anchor.

    The N (anchor, positive) pairs come from the batch (`pddm_tf.miners.NPairMiner`'s layout,
    whether or not `miner` is set): every class with at least two samples contributes its first
    two in batch order; other samples are unused. With a = anchors [N, d], p = positives [N, d] and
    S the `distance` (default the dot product a_i . p_j; a distance D enters as S = -D):

        L = -1/N sum_i log( exp(S(a_i, p_i)) / sum_j exp(S(a_i, p_j)) )
            + l2_reg * (mean_i ||a_i||^2 + mean_i ||p_i||^2) / 4

    The per-element terms are the N cross-entropies, reduced by `reducer` (default `MeanReducer`,
    today's 1/N); the regulariser shares the reducer's divisor. It is the one of TensorFlow's
    `npairs_loss`; on L2-normalised embeddings it is the constant l2_reg / 2, so it only matters
    for unnormalised ones. A batch with fewer than two such classes has no negative: N = 1 gives 0
    (log 1), N = 0 gives 0 by convention. The pairing is within one batch: `ref_embeddings` are
    refused. Usage: `loss(labels [m] int, embeddings [m, d]) -> scalar`.

    Args:
      l2_reg: weight of the squared-norm regulariser (Sohn uses 0.002 on unnormalised embeddings).
      distance: S, any `pddm_tf.distances` similarity or distance (default "dot_product").
      reducer: a `pddm_tf.reducers` reducer (default "mean", today's behaviour).
      miner: None (the N-pair pairing), or a miner returning `NPairMiner`'s layout.
    """

    default_distance = "dot_product"
    default_reducer = "mean"
    supports_ref = False

    def __init__(self, l2_reg: float = 0.0, distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 miner: str | dict[str, Any] | Miner | None = None,
                 name: str = "npair_loss", **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        self.l2_reg = finite_number("NPairLoss", "l2_reg", l2_reg)
        if self.l2_reg < 0:
            raise ValueError(f"l2_reg must be non-negative, got {l2_reg}")

    def mine(self, batch: LossBatch) -> Tuples | None:
        # NPairMiner's tuples, built from the labels alone: calling the miner would also compute the
        # batch's pairwise distances, which the N-pair pairing does not use.
        return npair_tuples(npair_pairs(batch.labels)) if self.miner is None else super().mine(batch)

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        if tuples is None:
            tuples = npair_tuples(npair_pairs(batch.labels))
        return self._terms(tf.gather(batch.embeddings, tuples.anchors), tf.gather(batch.embeddings, tuples.positives),
                           tf.gather(batch.embeddings, tuples.negatives), tuples.groups)

    def from_embeddings(self, anchor: tf.Tensor, positive: tf.Tensor, candidate: tf.Tensor,
                        groups: tf.Tensor | int) -> tf.Tensor:
        """The loss of N anchors given as [N^2, d] rows in `NPairMiner`'s layout: row i N + j holds a_i,
        its positive p_i and its j-th candidate (p_j, or a synthetic negative built from it); the
        softmax of anchor i is over its N candidates, the target at j = i. groups = N."""
        return self.reduce_terms(self._terms(anchor, positive, candidate, groups))

    def _terms(self, anchor: tf.Tensor, positive: tf.Tensor, candidate: tf.Tensor,
               groups: tf.Tensor | int) -> dict[str, ElementLosses]:
        n = groups
        first = tf.range(n) * n  # the rows i N (not a [:, 0] slice, which fails for N = 0)
        anchors = tf.gather(anchor, first)
        # Row i N holds a_i; the anchor of every row of group i is read there.
        logits = tf.reshape(self.distance.paired(tf.repeat(anchors, n, axis=0), candidate), [n, n])  # [N, N]
        if not self.distance.larger_is_closer:
            logits = -logits
        # Targets on the diagonal. Softmax cross-entropy written out: the fused op rejects the [0, 0] logits of N = 0.
        cross_entropy = tf.reduce_logsumexp(logits, axis=1) - tf.linalg.diag_part(logits)
        extra: tf.Tensor | float = 0.0
        if self.l2_reg:
            squared_norms = tf.reduce_sum(tf.square(anchors)) + tf.reduce_sum(tf.square(tf.gather(positive, first)))
            extra = 0.25 * self.l2_reg * squared_norms
        return {"anchor": ElementLosses(cross_entropy, extra=extra)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "l2_reg": self.l2_reg}
