"""CosFace loss (Wang, Wang, Zhou, Ji, Gong, Zhou, Li & Liu, "CosFace: Large Margin Cosine Loss for Deep
Face Recognition", CVPR 2018)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.losses._base import DistanceLike, MinerLike, ReducerLike
from pddm_tf.losses._large_margin import MarginSoftmaxLoss


@keras.saving.register_keras_serializable(package="pddm_tf")
class CosFaceLoss(MarginSoftmaxLoss):
    """CosFace (large margin cosine loss): softmax cross-entropy on s cos(theta), the true class's
    cosine reduced by m (Wang et al. 2018):

        L = 1/m sum_i -log( exp(s (cos theta_iy - m)) / (exp(s (cos theta_iy - m)) + sum_{c != y} exp(s cos theta_ic)) )

    pytorch-metric-learning's `CosFaceLoss` (same names and defaults). Usage: `loss(labels [m] int in
    [0, C), embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C. embedding_size: d.
      margin: m (paper and PML: 0.35).
      scale: s (paper and PML: 64).
      lr_multiplier: the class weights' learning-rate factor (1: trained with the network).
      distance: "cosine_similarity" (default) or "cosine". reducer: default "mean". miner: must be None.
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.35, scale: float = 64.0,
                 lr_multiplier: float = 1.0, distance: DistanceLike | None = None,
                 reducer: ReducerLike | None = None, miner: MinerLike | None = None, name: str = "cosface_loss",
                 **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, margin, scale, lr_multiplier=lr_multiplier, distance=distance,
                         reducer=reducer, miner=miner, name=name, **kwargs)

    def target(self, cosine: tf.Tensor) -> tf.Tensor:
        return cosine - self.margin
