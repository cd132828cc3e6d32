"""Supervised contrastive loss (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu & Krishnan,
NeurIPS 2020)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import ElementLosses, PairLoss, finite_number, masked_logsumexp
from pddm_tf.miners import Miner
from pddm_tf.reducers import Reducer


@keras.saving.register_keras_serializable(package="pddm_tf")
class SupConLoss(PairLoss):
    """Supervised contrastive loss (L^sup_out, the paper's eq. 2) on a similarity S (default: the
    cosine), one term per anchor i (METHODS.md section 10):

        L_i = -1/|P_i| sum_{p in P_i} log( exp(S_ip / t) / sum_{a in P_i u N_i} exp(S_ia / t) )

    An anchor without a positive contributes 0. The default reducer is `AvgNonZeroReducer`, as
    pytorch-metric-learning's. P_i and N_i are every other sample of the batch (or reference set) of
    the same and of another class, or with a `miner` the pairs its tuples name.

    Args:
      temperature: t (the paper and pytorch-metric-learning: 0.1).
      distance: a similarity, default "cosine_similarity"; a distance is refused.
      reducer: default "avg_non_zero". miner: None (all pairs) or a `pddm_tf.miners.Miner`.
    """

    default_distance = "cosine_similarity"
    default_reducer = "avg_non_zero"
    distance_kinds = ("similarity",)

    def __init__(self, temperature: float = 0.1, distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 miner: str | dict[str, Any] | Miner | None = None, name: str = "supcon_loss", **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        self.temperature = finite_number("SupConLoss", "temperature", temperature)
        if self.temperature <= 0:
            raise ValueError(f"SupConLoss: temperature must be > 0, got {temperature}")

    def pair_terms(self, matrix: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> dict[str, ElementLosses]:
        logits = matrix / self.temperature
        log_prob = logits - masked_logsumexp(logits, positive | negative, axis=1)[:, None]
        count = tf.reduce_sum(tf.cast(positive, logits.dtype), axis=1)
        total = tf.reduce_sum(tf.where(positive, log_prob, tf.zeros_like(log_prob)), axis=1)
        return {"anchor": ElementLosses(-total / tf.maximum(count, 1.0))}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}
