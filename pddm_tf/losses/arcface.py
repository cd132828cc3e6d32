"""ArcFace loss (Deng, Guo, Xue & Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019)."""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from pddm_tf.losses._base import DistanceLike, MinerLike, ReducerLike
from pddm_tf.losses._large_margin import MarginSoftmaxLoss

# Floor of sin^2(theta): keeps d sin / d cos finite where cos(theta) = +-1.
_SIN_FLOOR = 1e-7


def add_angle(cosine: tf.Tensor, radians: float) -> tf.Tensor:
    """cos(theta + m) from cos(theta), theta in [0, pi]: cos(theta) cos(m) - sin(theta) sin(m), with
    sin(theta) = sqrt(1 - cos^2) floored so that the gradient stays finite at cos = +-1."""
    sine = tf.sqrt(tf.maximum(1.0 - tf.square(cosine), _SIN_FLOOR))
    return cosine * math.cos(radians) - sine * math.sin(radians)


@keras.saving.register_keras_serializable(package="pddm_tf")
class ArcFaceLoss(MarginSoftmaxLoss):
    """ArcFace: softmax cross-entropy on s cos(theta), the true class's angle increased by m
    (Deng et al. 2019):

        L = 1/m sum_i -log( exp(s cos(theta_iy + m)) / (exp(s cos(theta_iy + m)) + sum_{c != y} exp(s cos theta_ic)) )

    theta_ic is the angle between x_i and the class weight W_c (both normalised). As in
    pytorch-metric-learning's `ArcFaceLoss` (same names and defaults; `margin` in degrees, 28.6 =
    0.5 rad, the paper's m), cos(theta + m) is used as is, without the paper code's fallback for
    theta + m > pi. Usage: `loss(labels [m] int in [0, C), embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C. embedding_size: d.
      margin: m in degrees (28.6).
      scale: s (paper and PML: 64).
      lr_multiplier: the class weights' learning-rate factor (1: trained with the network).
      distance: "cosine_similarity" (default) or "cosine". reducer: default "mean". miner: must be None.
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 28.6, scale: float = 64.0,
                 lr_multiplier: float = 1.0, distance: DistanceLike | None = None,
                 reducer: ReducerLike | None = None, miner: MinerLike | None = None, name: str = "arcface_loss",
                 **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, margin, scale, lr_multiplier=lr_multiplier, distance=distance,
                         reducer=reducer, miner=miner, name=name, **kwargs)
        if self.margin >= 180.0:
            raise ValueError(f"{type(self).__name__}: margin is in degrees and must be < 180, got {self.margin}")

    def target(self, cosine: tf.Tensor) -> tf.Tensor:
        return add_angle(cosine, math.radians(self.margin))
