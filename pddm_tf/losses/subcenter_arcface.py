"""Sub-center ArcFace loss (Deng, Guo, Liu, Zhou & Zafeiriou, "Sub-center ArcFace: Boosting Face
Recognition by Large-scale Noisy Web Faces", ECCV 2020)."""

from __future__ import annotations

from typing import Any

import keras

from pddm_tf.losses._base import DistanceLike, MinerLike, ReducerLike
from pddm_tf.losses._proxies import positive_int
from pddm_tf.losses.arcface import ArcFaceLoss


@keras.saving.register_keras_serializable(package="pddm_tf")
class SubCenterArcFaceLoss(ArcFaceLoss):
    """ArcFace with K sub-centres per class: cos theta_ic is the largest cosine between x_i and the
    K sub-centres of class c (Deng et al. 2020), then the ArcFace loss (`ArcFaceLoss`).
    pytorch-metric-learning's `SubCenterArcFaceLoss` (same names and defaults). Usage: `loss(labels [m]
    int in [0, C), embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C. embedding_size: d.
      margin: m in degrees (28.6 = 0.5 rad). scale: s (64).
      sub_centers: K (paper and PML: 3).
      lr_multiplier: the sub-centres' learning-rate factor (1: trained with the network).
      distance: "cosine_similarity" (default) or "cosine". reducer: default "mean". miner: must be None.
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 28.6, scale: float = 64.0,
                 sub_centers: int = 3, lr_multiplier: float = 1.0, distance: DistanceLike | None = None,
                 reducer: ReducerLike | None = None, miner: MinerLike | None = None,
                 name: str = "subcenter_arcface_loss", **kwargs: Any) -> None:
        sub_centers = positive_int("sub_centers", sub_centers, "SubCenterArcFaceLoss")
        super().__init__(num_classes, embedding_size, margin, scale, lr_multiplier=lr_multiplier, distance=distance,
                         reducer=reducer, miner=miner, name=name, sub_centers=sub_centers, **kwargs)
        self.sub_centers = sub_centers

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["sub_centers"] = self.sub_centers
        return config
