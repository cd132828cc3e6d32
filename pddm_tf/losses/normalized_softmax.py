"""Normalized softmax loss (Zhai & Wu, "Classification is a Strong Baseline for Deep Metric Learning",
BMVC 2019)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.losses._base import DistanceLike, ElementLosses, MinerLike, ReducerLike
from pddm_tf.losses._proxies import ProxyLoss, cross_entropy, finite


@keras.saving.register_keras_serializable(package="pddm_tf")
class NormalizedSoftmaxLoss(ProxyLoss):
    """Softmax cross-entropy on temperature-scaled cosine logits (Zhai & Wu 2019):

        L_i = -log( exp(x_i . p_{y_i} / sigma) / sum_z exp(x_i . p_z / sigma) )

    per embedding, reduced by `reducer` (default "mean"). x_i and the class weights p_z are
    L2-normalised at every call. pytorch-metric-learning's `NormalizedSoftmaxLoss` (same names,
    defaults and reduction). Usage: `loss(labels [m] int
    in [0, C), embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C. embedding_size: d.
      temperature: sigma (paper and PML: 0.05).
      lr_multiplier: the class weights' learning-rate factor (1: the paper trains them with the
        network at one learning rate).
      distance: "cosine_similarity" (default) or "cosine" (the loss is defined on cosine logits).
      reducer: default "mean". miner: must be None.
    """

    def __init__(self, num_classes: int, embedding_size: int, temperature: float = 0.05,
                 lr_multiplier: float = 1.0, distance: DistanceLike | None = None,
                 reducer: ReducerLike | None = None, miner: MinerLike | None = None,
                 name: str = "normalized_softmax_loss", **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, lr_multiplier=lr_multiplier, distance=distance,
                         reducer=reducer, miner=miner, name=name, **kwargs)
        self.temperature = finite("temperature", temperature, 0.0, True, owner="NormalizedSoftmaxLoss")

    def proxy_terms(self, labels: tf.Tensor, embeddings: tf.Tensor) -> dict[str, ElementLosses]:
        return {"loss": cross_entropy(self.cosines(embeddings)[:, :, 0] / self.temperature, labels)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}
