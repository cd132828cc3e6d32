"""ProxyNCA loss (Movshovitz-Attias, Toshev, Leung, Ioffe & Singh, "No Fuss Distance Metric Learning
using Proxies", ICCV 2017), with the softmax temperature of ProxyNCA++ (Teh, DeVries & Taylor, ECCV 2020)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._proxies import ProxyLoss, finite, mean_cross_entropy


@keras.saving.register_keras_serializable(package="pddm_tf")
class ProxyNCALoss(ProxyLoss):
    """ProxyNCA: softmax cross-entropy of an embedding over the distances to the class proxies.

    With x_i the L2-normalised embedding, p_z the normalised proxy of class z, d the squared Euclidean
    distance and s = `softmax_scale` (= 1/T, ProxyNCA++'s temperature T):

        L = 1/m sum_i -log( exp(-s d(x_i, p_{y_i})) / sum_z exp(-s d(x_i, p_z)) )

    The denominator sums over every proxy, the target's included (as pytorch-metric-learning and
    ProxyNCA++ do; the 2017 paper leaves the target out). With distance="cosine" the logits
    are s cos(x_i, p_z) (equivalent: on unit vectors d = 2 - 2 cos, and the constant cancels, with
    s doubled). Usage: `loss(labels [m] int in [0, C), embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C. embedding_size: d.
      softmax_scale: s = 1/T. pytorch-metric-learning's default is 1; ProxyNCA++ (its
        "low temperature scaling") uses T = 1/9, i.e. softmax_scale=9.
      lr_multiplier: the proxies' learning-rate factor. 1 by default: the Proxy-Anchor authors'
        ProxyNCA baseline trains the proxies at the network's rate; ProxyNCA++'s "fast moving
        proxies" raise it (set it here).
      distance: "squared_euclidean" (default, the paper's and PML's), "euclidean" or "cosine".
    """

    distances = ("squared_euclidean", "euclidean", "cosine")

    def __init__(self, num_classes: int, embedding_size: int, softmax_scale: float = 1.0,
                 lr_multiplier: float = 1.0, distance: str | Distance = "squared_euclidean",
                 name: str = "proxy_nca_loss", **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, lr_multiplier=lr_multiplier, distance=distance, name=name,
                         **kwargs)
        self.softmax_scale = finite("softmax_scale", softmax_scale, 0.0, True, owner="ProxyNCALoss")

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        labels, embeddings = self.checked(labels, embeddings)
        return mean_cross_entropy(self.softmax_scale * self.scores(embeddings), labels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "softmax_scale": self.softmax_scale}
