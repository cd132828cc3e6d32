"""Multi-similarity loss with its pair mining (Wang, Han, Huang, Dong & Scott, CVPR 2019)."""

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
    masked_logsumexp,
)
from pddm_tf.miners import Miner, Tuples
from pddm_tf.reducers import Reducer


@keras.saving.register_keras_serializable(package="pddm_tf")
class MultiSimilarityLoss(EmbeddingLoss):
    """Multi-similarity loss on a similarity S, by default the cosine S_ij = f_i . f_j / (||f_i|| ||f_j||).

    Mining (on stopped similarities), for anchor i with positives P_i and negatives N_i:
        keep negative k if S_ik + epsilon > min_{j in P_i} S_ij
        keep positive j if S_ij - epsilon < max_{k in N_i} S_ik
    Loss, over the kept pairs P~_i, N~_i:
        L_i = 1/alpha log(1 + sum_{j in P~_i} exp(-alpha (S_ij - base)))
            + 1/beta  log(1 + sum_{k in N~_i} exp( beta (S_ik - base)))
    The per-element terms are the m values L_i (0 for an anchor with no kept positive or no kept
    negative), reduced by `reducer`. The default `MeanReducer` divides by the batch size m, as the
    authors' code does, so a batch without a valid pair gives 0. Both log(1 + sum exp) terms are
    computed as max-shifted log-sum-exps (beta = 50 would overflow otherwise). Positives exclude
    the anchor itself by index (the authors' code drops positives with S >= 1 - 1e-5, which also
    drops exact duplicates).
    The loss is defined on similarities: a distance (smaller is closer) is refused.
    With a `miner`, its tuples' pairs replace this mining (P~_i: the positives named with anchor i,
    N~_i: the negatives), ranked by `Distance.to_dissimilarity` (1 - S for the cosine);
    `from_indices` evaluates given tuples so. `ref_embeddings` / `ref_labels` take the pairs'
    second members from a reference set.
    Usage: `loss(labels [m] int, embeddings [m, d]) -> scalar`.

    Args:
      alpha, beta: scales of the positive and negative terms.
      base: lambda, the similarity margin.
      epsilon: the mining margin (of the loss's own mining, without `miner`).
      distance: S, a `pddm_tf.distances` similarity (default "cosine_similarity"; also "dot_product").
      reducer: a `pddm_tf.reducers` reducer (default "mean", today's behaviour).
      miner: None (the mining above), or a `pddm_tf.miners.Miner`, its registered name or config dict.
    """

    default_distance = "cosine_similarity"
    default_reducer = "mean"
    distance_kinds = ("similarity",)

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
                 miner: str | dict[str, Any] | Miner | None = None,
                 distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 name: str = "multi_similarity_loss", **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        owner = "MultiSimilarityLoss"
        self.alpha = finite_number(owner, "alpha", alpha)
        self.beta = finite_number(owner, "beta", beta)
        self.base = finite_number(owner, "base", base)
        self.epsilon = finite_number(owner, "epsilon", epsilon)
        if self.alpha <= 0 or self.beta <= 0 or self.epsilon < 0:
            raise ValueError(f"need alpha > 0, beta > 0, epsilon >= 0; got {alpha}, {beta}, {epsilon}")

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        s = batch.matrix
        if tuples is None:
            kept_positive, kept_negative = self._mine(tf.stop_gradient(s), *batch.pair_masks())
        else:
            kept_positive, kept_negative = batch.tuple_masks(tuples)
        pull = masked_logsumexp(-self.alpha * (s - self.base), kept_positive, axis=1, with_one=True) / self.alpha
        push = masked_logsumexp(self.beta * (s - self.base), kept_negative, axis=1, with_one=True) / self.beta
        valid = tf.reduce_any(kept_positive, axis=1) & tf.reduce_any(kept_negative, axis=1)
        return {"anchor": ElementLosses(tf.where(valid, pull + push, tf.zeros_like(pull)))}

    def _mine(self, s: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The informative pairs, [m, n] bool each (an empty set makes the other empty too)."""
        inf = tf.constant(float("inf"), s.dtype)
        hardest_positive = tf.reduce_min(tf.where(positive, s, inf), axis=1, keepdims=True)
        hardest_negative = tf.reduce_max(tf.where(negative, s, -inf), axis=1, keepdims=True)
        return (positive & (s - self.epsilon < hardest_negative),
                negative & (s + self.epsilon > hardest_positive))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "base": self.base,
                "epsilon": self.epsilon}
