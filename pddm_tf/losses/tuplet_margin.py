"""Tuplet margin loss (Yu & Tao, "Deep Metric Learning with Tuplet Margin Loss", ICCV 2019)."""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import ElementLosses, PairLoss, finite_number, masked_logsumexp
from pddm_tf.miners import Miner
from pddm_tf.reducers import Reducer

# acos has an infinite slope at +-1: cosines are kept this far inside before taking the angle.
_EDGE = 1e-6


@keras.saving.register_keras_serializable(package="pddm_tf")
class TupletMarginLoss(PairLoss):
    """Tuplet margin loss on the cosine S, one term per positive pair (a, p) (METHODS.md section 10):

        l_ap = log(1 + sum_{n in N_a} exp( s (S_an - cos(theta_ap - beta)) )),  theta_ap = acos(S_ap)

    (the paper's eq. 5: the positive's angle is reduced by the slack margin beta). The default
    reducer is `MeanReducer` over the positive pairs, as pytorch-metric-learning's.

    Args:
      margin: beta in degrees (paper and pytorch-metric-learning: 5.73, i.e. 0.1 rad).
      scale: s (paper and pytorch-metric-learning: 64).
      distance: "cosine_similarity" only (the margin is an angle); anything else is refused.
      reducer: default "mean". miner: None (all pairs) or a `pddm_tf.miners.Miner`.
    """

    default_distance = "cosine_similarity"
    default_reducer = "mean"
    distance_kinds = ("similarity",)

    def __init__(self, margin: float = 5.73, scale: float = 64.0,
                 distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 miner: str | dict[str, Any] | Miner | None = None, name: str = "tuplet_margin_loss",
                 **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        self.margin = finite_number("TupletMarginLoss", "margin", margin)
        self.scale = finite_number("TupletMarginLoss", "scale", scale)
        if self.scale <= 0 or not 0 <= self.margin < 180:
            raise ValueError(f"TupletMarginLoss needs scale > 0 and 0 <= margin < 180 degrees, got {scale}, {margin}")

    def check_distance(self, distance: Distance) -> None:
        super().check_distance(distance)
        if distance.name != "cosine_similarity":
            raise ValueError(f"TupletMarginLoss works on angles: it needs 'cosine_similarity', got {distance!r}")

    def pair_terms(self, matrix: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> dict[str, ElementLosses]:
        angle = tf.acos(tf.clip_by_value(matrix, -1.0 + _EDGE, 1.0 - _EDGE))
        shifted = tf.cos(angle - math.radians(self.margin))  # [m, n]: the margin-reduced positive cosine
        negatives = masked_logsumexp(self.scale * matrix, negative, axis=1)[:, None]
        return {"positive": ElementLosses(tf.nn.softplus(negatives - self.scale * shifted), positive)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "scale": self.scale}
