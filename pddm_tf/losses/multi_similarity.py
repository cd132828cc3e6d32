"""Multi-similarity loss with its pair mining (Wang, Han, Huang, Dong & Scott, CVPR 2019)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import l2_normalize
from pddm_tf.losses._base import EmbeddingLoss, masked_logsumexp
from pddm_tf.miners.mining import pair_masks


@keras.saving.register_keras_serializable(package="pddm_tf")
class MultiSimilarityLoss(EmbeddingLoss):
    """Multi-similarity loss on cosine similarities S_ij = f_i . f_j / (||f_i|| ||f_j||).

    Mining (on stopped similarities), for anchor i with positives P_i and negatives N_i:
        keep negative k if S_ik + epsilon > min_{j in P_i} S_ij
        keep positive j if S_ij - epsilon < max_{k in N_i} S_ik
    Loss, over the kept pairs P~_i, N~_i:
        L_i = 1/alpha log(1 + sum_{j in P~_i} exp(-alpha (S_ij - base)))
            + 1/beta  log(1 + sum_{k in N~_i} exp( beta (S_ik - base)))
        L = 1/m sum_i L_i
    An anchor with no kept positive or no kept negative contributes 0 but still counts in m,
    as in the authors' code (which divides by the batch size); so a batch without a valid pair
    gives 0. Both log(1 + sum exp) terms are computed as max-shifted log-sum-exps (beta = 50 would
    overflow otherwise). Positives exclude the anchor itself by index (the authors' code drops
    positives with S >= 1 - 1e-5, which also drops exact duplicates).
    Usage: `loss(labels [m] int, embeddings [m, d]) -> scalar`.

    Args:
      alpha, beta: scales of the positive and negative terms.
      base: lambda, the similarity margin.
      epsilon: the mining margin.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
                 name: str = "multi_similarity_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if alpha <= 0 or beta <= 0 or epsilon < 0:
            raise ValueError(f"need alpha > 0, beta > 0, epsilon >= 0; got {alpha}, {beta}, {epsilon}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base = float(base)
        self.epsilon = float(epsilon)

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        positive, negative = pair_masks(labels)
        f = l2_normalize(embeddings)
        s = tf.matmul(f, f, transpose_b=True)
        kept_positive, kept_negative = self._mine(tf.stop_gradient(s), positive, negative)
        pull = masked_logsumexp(-self.alpha * (s - self.base), kept_positive, axis=1, with_one=True) / self.alpha
        push = masked_logsumexp(self.beta * (s - self.base), kept_negative, axis=1, with_one=True) / self.beta
        valid = tf.reduce_any(kept_positive, axis=1) & tf.reduce_any(kept_negative, axis=1)
        per_anchor = tf.where(valid, pull + push, tf.zeros_like(pull))
        return tf.reduce_sum(per_anchor) / tf.maximum(tf.cast(tf.size(per_anchor), s.dtype), 1.0)

    def _mine(self, s: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The informative pairs, [m, m] bool each (an empty set makes the other empty too)."""
        inf = tf.constant(float("inf"), s.dtype)
        hardest_positive = tf.reduce_min(tf.where(positive, s, inf), axis=1, keepdims=True)
        hardest_negative = tf.reduce_max(tf.where(negative, s, -inf), axis=1, keepdims=True)
        return (positive & (s - self.epsilon < hardest_negative),
                negative & (s + self.epsilon > hardest_positive))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "base": self.base,
                "epsilon": self.epsilon}
