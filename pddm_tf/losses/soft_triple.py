"""SoftTriple loss (Qian, Shang, Sun, Hu, Li & Jin, "SoftTriple Loss: Deep Metric Learning Without
Triplet Sampling", ICCV 2019)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.losses._base import DistanceLike, ElementLosses, MinerLike, ReducerLike
from pddm_tf.losses._proxies import ProxyLoss, cross_entropy, finite, positive_int


@keras.saving.register_keras_serializable(package="pddm_tf")
class SoftTripleLoss(ProxyLoss):
    """SoftTriple: a softmax over classes whose similarity is a soft maximum over K centres per class.

    With s_ick = cos(x_i, w_c^k) (Qian et al. 2019):

        S'_ic = sum_k softmax_k(s_ick / gamma) s_ick
        L_i = -log( exp(la (S'_iy - delta)) / (exp(la (S'_iy - delta)) + sum_{c != y} exp(la S'_ic)) )

    per embedding, reduced by `reducer` (default "mean"): pytorch-metric-learning's
    `SoftTripleLoss` (same names, defaults and reduction). The
    paper's centre regulariser (weight tau = 0.2) is not part of the loss, as in PML's default.
    Usage: `loss(labels [m] int in [0, C), embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C. embedding_size: d.
      centers_per_class: K (paper and PML: 10).
      la: lambda, the scale of the class logits (paper and PML: 20).
      gamma: the temperature of the soft assignment to centres (paper and PML: 0.1).
      margin: delta (paper and PML: 0.01).
      lr_multiplier: the centres' learning-rate factor; 100 as in the authors' released command
        (centres at 1e-2, network at 1e-4).
      distance: "cosine_similarity" (default) or "cosine" (the loss is defined on cosines).
      reducer: default "mean". miner: must be None.
    """

    def __init__(self, num_classes: int, embedding_size: int, centers_per_class: int = 10, la: float = 20.0,
                 gamma: float = 0.1, margin: float = 0.01, lr_multiplier: float = 100.0,
                 distance: DistanceLike | None = None, reducer: ReducerLike | None = None,
                 miner: MinerLike | None = None, name: str = "soft_triple_loss", **kwargs: Any) -> None:
        centers_per_class = positive_int("centers_per_class", centers_per_class, "SoftTripleLoss")
        super().__init__(num_classes, embedding_size, proxies_per_class=centers_per_class,
                         lr_multiplier=lr_multiplier, distance=distance, reducer=reducer, miner=miner, name=name,
                         **kwargs)
        self.centers_per_class = centers_per_class
        self.la = finite("la", la, 0.0, True, owner="SoftTripleLoss")
        self.gamma = finite("gamma", gamma, 0.0, True, owner="SoftTripleLoss")
        self.margin = finite("margin", margin, owner="SoftTripleLoss")

    def proxy_terms(self, labels: tf.Tensor, embeddings: tf.Tensor) -> dict[str, ElementLosses]:
        s = self.cosines(embeddings)                                        # [m, C, K]
        soft = tf.reduce_sum(tf.nn.softmax(s / self.gamma, axis=-1) * s, axis=-1)
        margin = self.margin * tf.one_hot(labels, self.num_classes, dtype=soft.dtype)
        return {"loss": cross_entropy(self.la * (soft - margin), labels)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "centers_per_class": self.centers_per_class, "la": self.la,
                "gamma": self.gamma, "margin": self.margin}
