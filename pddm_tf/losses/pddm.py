"""The double-header hinge loss of PDDM (METHODS.md section 2) and its one-head triplet variant."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from pddm_tf.distances import squared_distances_of_pairs
from pddm_tf.losses._base import check_embeddings, labels_from_y_true
from pddm_tf.miners import QuadrupletMiner, Tuples
from pddm_tf.miners.mining import MINING_MODES, euclidean_scores


class LossTerms(NamedTuple):
    """The parts of the objective, each a float32 scalar (0 when there is no valid quadruplet)."""

    total: tf.Tensor  # metric + embedding_weight * embedding
    metric: tf.Tensor  # E_m
    embedding: tf.Tensor  # E_e


def double_header_hinge(
    s_ij: tf.Tensor, s_ik: tf.Tensor, s_jl: tf.Tensor,
    d_ij: tf.Tensor, d_ik: tf.Tensor, d_jl: tf.Tensor,
    alpha: float, beta: float, embedding_weight: float, heads: int = 2,
) -> LossTerms:
    """Mean over q quadruplets of E_m + lambda E_e (METHODS.md section 2).

    E_m = max(0, alpha + S_ik - S_ij) + max(0, alpha + S_jl - S_ij)
    E_e = max(0, beta + D_ij - D_ik) + max(0, beta + D_ij - D_jl), D the squared Euclidean distance.
    With heads=1 (the paper's PDDM+Triplet) only the (i, j, k) terms are kept.

    All inputs are [q]. The paper sums over quadruplets; we average, so the loss scale (and hence the
    learning rate) does not depend on how many quadruplets the miner returns. For q = 0 every term
    is 0, never NaN.
    """
    if heads not in (1, 2):
        raise ValueError(f"heads must be 1 (triplet) or 2 (double header), got {heads}")
    metric = tf.nn.relu(alpha + s_ik - s_ij)
    embedding = tf.nn.relu(beta + d_ij - d_ik)
    if heads == 2:
        metric += tf.nn.relu(alpha + s_jl - s_ij)
        embedding += tf.nn.relu(beta + d_ij - d_jl)
    count = tf.maximum(tf.cast(tf.size(s_ij), metric.dtype), 1.0)
    e_m = tf.reduce_sum(metric) / count
    e_e = tf.reduce_sum(embedding) / count
    return LossTerms(total=e_m + embedding_weight * e_e, metric=e_m, embedding=e_e)


@keras.saving.register_keras_serializable(package="pddm_tf")
class DoubleHeaderHingeLoss(keras.losses.Loss):
    """PDDM's double-header hinge loss E_m + lambda E_e over mined quadruplets (METHODS.md section 2).

    Standalone use: `loss(labels, {"embeddings": f, "scores": S})` with labels [m] int, f [m, d]
    embeddings and S [m, m] the all-pairs similarity (e.g. `PDDM()(f)`). Quadruplets are mined on
    S (`miner`, a `pddm_tf.miners.QuadrupletMiner` of mode `mining`) and the loss is evaluated on
    them; gradients flow through S and f. Without "scores" the similarity is -||f_i - f_j||^2, i.e.
    the quadruplet loss with Euclidean hard mining. `PDDMModel` instead calls `from_indices` with
    pair scores computed only for the mined pairs, and HDML `from_embeddings` with synthetic ones.

    Args:
      alpha: margin of the metric (PDDM score) hinge. The defaults (alpha 1.0, beta 0.5,
        lambda 0.5, per-pair mining) are the best of the settings measured in BENCHMARKS.md
        section 2 (alpha 0.5/1.0/2.0, beta 0.2/0.5, lambda 0/0.5/1/2, hardest vs per-pair).
      beta: margin of the embedding (squared distance) hinge; unit embeddings have D in [0, 4].
      embedding_weight: lambda, the weight of E_e.
      heads: 2 for the quadruplet (double-header) loss, 1 for the PDDM+Triplet variant.
      mining: "hardest" (one quadruplet per batch, the paper) or "per_pair".

    Example (Euclidean scores S = -D; per-pair mining finds the quadruplets (0, 1, 2, 2) and
    (2, 3, 1, 1), whose E_m are 1.75 and 3 and E_e 1.25 and 2.5: (1.75 + 3) / 2 + 0.5 (1.25 + 2.5) / 2):
      >>> loss = DoubleHeaderHingeLoss()
      >>> float(loss(tf.constant([0, 0, 1, 1]), tf.constant([[0.0], [1.0], [1.5], [3.0]])))
      3.3125
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, embedding_weight: float = 0.5, heads: int = 2,
                 mining: str = "per_pair", name: str = "double_header_hinge_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if heads not in (1, 2):
            raise ValueError(f"heads must be 1 (triplet) or 2 (double header), got {heads}")
        if mining not in MINING_MODES:
            raise ValueError(f"unknown mining mode {mining!r}; expected one of {MINING_MODES}")
        if alpha < 0 or beta < 0 or embedding_weight < 0:
            raise ValueError("alpha, beta and embedding_weight must be non-negative")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.embedding_weight = float(embedding_weight)
        self.heads = int(heads)
        self.mining = mining

    @property
    def miner(self) -> QuadrupletMiner:
        """The miner of this loss's quadruplets: `QuadrupletMiner(self.mining)`."""
        return QuadrupletMiner(self.mining)

    def from_indices(self, embeddings: tf.Tensor, tuples: Tuples, s_ap: tf.Tensor, s_an: tf.Tensor) -> LossTerms:
        """Loss terms of `QuadrupletMiner`'s tuples of a batch: embeddings [m, d], tuples (2q rows, row
        r = (i, j, k) and row q + r = (j, i, l)), and the scores of each row's pairs, s_ap [2q]
        (S_ij, then S_ji = S_ij) and s_an [2q] (S_ik, then S_jl)."""
        gather = functools.partial(tf.gather, embeddings)
        return self.from_embeddings(gather(tuples.anchors), gather(tuples.positives), gather(tuples.negatives),
                                    tuples.groups, s_ap, s_an)

    def from_embeddings(self, anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor, groups: tf.Tensor | int,
                        s_ap: tf.Tensor, s_an: tf.Tensor) -> LossTerms:
        """Loss terms of q = `groups` quadruplets given as 2q rows of embeddings [2q, d] each, laid out as
        `QuadrupletMiner`'s tuples (the negatives may be synthetic, as HDML's), with their pair
        scores s_ap, s_an [2q]."""
        q = groups
        # D_ij once (rows q + r repeat the pair as (j, i)); D_ik and D_jl from all 2q rows.
        d_ij, d_an = squared_distances_of_pairs(anchor[:q], positive[:q]), squared_distances_of_pairs(anchor, negative)
        return double_header_hinge(s_ap[:q], s_an[:q], s_an[q:], d_ij, d_an[:q], d_an[q:],
                                   self.alpha, self.beta, self.embedding_weight, self.heads)

    def terms(self, labels: tf.Tensor, embeddings: tf.Tensor, scores: tf.Tensor | None = None) -> LossTerms:
        """All loss terms for a batch, mining on `scores` ([m, m]; default negative squared distances)."""
        embeddings = check_embeddings(embeddings, labels)
        if scores is None:
            scores = euclidean_scores(embeddings)
        tuples = self.miner(labels, embeddings, -scores)

        def pick(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
            return tf.gather_nd(scores, tf.stack([a, b], axis=1))

        return self.from_indices(embeddings, tuples, pick(tuples.anchors, tuples.positives),
                                 pick(tuples.anchors, tuples.negatives))

    def call(self, y_true: tf.Tensor, y_pred: Any) -> tf.Tensor:
        if isinstance(y_pred, dict):
            embeddings, scores = y_pred["embeddings"], y_pred.get("scores")
        else:
            embeddings, scores = y_pred, None
        return self.terms(labels_from_y_true(y_true), embeddings, scores).total

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(alpha=self.alpha, beta=self.beta, embedding_weight=self.embedding_weight,
                      heads=self.heads, mining=self.mining)
        return config
