"""Multi-similarity loss with its pair mining (Wang, Han, Huang, Dong & Scott, CVPR 2019)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import l2_normalize
from pddm_tf.losses._base import EmbeddingLoss, masked_logsumexp, miner_config, optional_miner, tuple_pair_masks
from pddm_tf.miners import Miner, Tuples
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
    With a `miner`, its tuples' pairs replace this mining (P~_i: the positives named with anchor i,
    N~_i: the negatives), ranked by the cosine distance 1 - S; `from_indices` evaluates given tuples so.
    Usage: `loss(labels [m] int, embeddings [m, d]) -> scalar`.

    Args:
      alpha, beta: scales of the positive and negative terms.
      base: lambda, the similarity margin.
      epsilon: the mining margin (of the loss's own mining, without `miner`).
      miner: None (the mining above), or a `pddm_tf.miners.Miner`, its registered name or config dict.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
                 miner: str | dict[str, Any] | Miner | None = None, name: str = "multi_similarity_loss",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if alpha <= 0 or beta <= 0 or epsilon < 0:
            raise ValueError(f"need alpha > 0, beta > 0, epsilon >= 0; got {alpha}, {beta}, {epsilon}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base = float(base)
        self.epsilon = float(epsilon)
        self.miner = optional_miner(miner)

    @property
    def variables(self) -> list[keras.Variable]:
        """The miner's state, for the model to save."""
        return [] if self.miner is None else self.miner.variables

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        s = self._similarities(embeddings)
        if self.miner is not None:
            tuples = self.miner(labels, embeddings, 1.0 - s)
            return self._from_masks(s, *tuple_pair_masks(tuples, tf.shape(s)[0]))
        return self._from_masks(s, *self._mine(tf.stop_gradient(s), *pair_masks(labels)))

    def from_indices(self, tuples: Tuples, embeddings: tf.Tensor | None = None,
                     distances: tf.Tensor | None = None) -> tf.Tensor:
        """The loss of the pairs that tuples name (`tuple_pair_masks`) as the kept pairs, from the
        batch's embeddings [m, d] (the loss is on cosine similarities, so distances are not enough)."""
        if embeddings is None:
            raise ValueError("MultiSimilarityLoss scores cosine similarities: from_indices needs the embeddings")
        s = self._similarities(embeddings)
        return self._from_masks(s, *tuple_pair_masks(tuples, tf.shape(s)[0]))

    @staticmethod
    def _similarities(embeddings: tf.Tensor) -> tf.Tensor:
        f = l2_normalize(embeddings)
        return tf.matmul(f, f, transpose_b=True)

    def _from_masks(self, s: tf.Tensor, kept_positive: tf.Tensor, kept_negative: tf.Tensor) -> tf.Tensor:
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
                "epsilon": self.epsilon, "miner": miner_config(self.miner)}
