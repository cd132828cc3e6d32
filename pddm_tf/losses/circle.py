"""Circle loss (Sun, Cheng, Zhang, Zhang, Zheng, Wang & Wei, CVPR 2020)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import ElementLosses, PairLoss, finite_number, masked_logsumexp
from pddm_tf.miners import Miner
from pddm_tf.reducers import Reducer


@keras.saving.register_keras_serializable(package="pddm_tf")
class CircleLoss(PairLoss):
    """Circle loss on a similarity S (default: the cosine), one term per anchor i (METHODS.md section 10):

        alpha_p = [1 + m - S_ip]_+ ,  alpha_n = [S_in + m]_+            (stopped: self-paced weights)
        L_i = softplus( logsumexp_{p in P_i} -gamma alpha_p (S_ip - (1 - m))
                      + logsumexp_{n in N_i}  gamma alpha_n (S_in - m) )

    (the paper's eq. 6 with Delta_p = 1 - m, Delta_n = m, O_p = 1 + m, O_n = -m). An anchor without a
    positive or a negative contributes 0. The default reducer is `AvgNonZeroReducer`, as
    pytorch-metric-learning's: the mean over the anchors with a non-zero loss. P_i and N_i are all
    pairs of the batch (or reference set), or with a `miner` the pairs its tuples name.

    Args:
      m: the relaxation margin (paper and pytorch-metric-learning: 0.4 a common choice, 0.25 for
        face recognition).
      gamma: the scale (pytorch-metric-learning's default 80; the paper uses 80-256).
      distance: a similarity (larger is closer), default "cosine_similarity"; a distance is refused.
      reducer: default "avg_non_zero". miner: None (all pairs) or a `pddm_tf.miners.Miner`.
    """

    default_distance = "cosine_similarity"
    default_reducer = "avg_non_zero"
    distance_kinds = ("similarity",)

    def __init__(self, m: float = 0.4, gamma: float = 80.0, distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 miner: str | dict[str, Any] | Miner | None = None, name: str = "circle_loss", **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        self.m = finite_number("CircleLoss", "m", m)
        self.gamma = finite_number("CircleLoss", "gamma", gamma)
        if self.gamma <= 0:
            raise ValueError(f"CircleLoss: gamma must be > 0, got {gamma}")

    def pair_terms(self, matrix: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> dict[str, ElementLosses]:
        fixed = tf.stop_gradient(matrix)
        logit_p = -self.gamma * tf.nn.relu(1.0 + self.m - fixed) * (matrix - (1.0 - self.m))
        logit_n = self.gamma * tf.nn.relu(fixed + self.m) * (matrix - self.m)
        losses = tf.nn.softplus(masked_logsumexp(logit_p, positive, axis=1)
                                + masked_logsumexp(logit_n, negative, axis=1))
        valid = tf.reduce_any(positive, axis=1) & tf.reduce_any(negative, axis=1)
        return {"anchor": ElementLosses(tf.where(valid, losses, tf.zeros_like(losses)))}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "m": self.m, "gamma": self.gamma}
