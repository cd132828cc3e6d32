"""ProxyNCA loss (Movshovitz-Attias, Toshev, Leung, Ioffe & Singh, "No Fuss Distance Metric Learning
using Proxies", ICCV 2017), with the softmax temperature of ProxyNCA++ (Teh, DeVries & Taylor, ECCV 2020)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.losses._base import DistanceLike, ElementLosses, MinerLike, ReducerLike
from pddm_tf.losses._proxies import ProxyLoss, cross_entropy, finite


@keras.saving.register_keras_serializable(package="pddm_tf")
class ProxyNCALoss(ProxyLoss):
    """ProxyNCA: softmax cross-entropy of an embedding over the distances to the class proxies.

    With x_i the L2-normalised embedding, p_z the normalised proxy of class z, d the squared Euclidean
    distance and s = `softmax_scale` (= 1/T, ProxyNCA++'s temperature T), per embedding

        L_i = -log( exp(-s d(x_i, p_{y_i})) / sum_z exp(-s d(x_i, p_z)) )

    reduced by `reducer` (default "mean", PML's).
    The denominator sums over every proxy, the target's included (as pytorch-metric-learning and
    ProxyNCA++ do; the 2017 paper leaves the target out). With a similarity S (larger is closer) the
    logits are s S(x_i, p_z): with "cosine_similarity", s cos (on unit vectors d = 2 - 2 cos, so
    this is the default with s doubled: the constant cancels in the softmax).
    Usage: `loss(labels [m] int in [0, C), embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C. embedding_size: d.
      softmax_scale: s = 1/T. pytorch-metric-learning's default is 1; ProxyNCA++ (its
        "low temperature scaling") uses T = 1/9, i.e. softmax_scale=9.
      lr_multiplier: the proxies' learning-rate factor. 1 by default: the Proxy-Anchor authors'
        ProxyNCA baseline trains the proxies at the network's rate; ProxyNCA++'s "fast moving
        proxies" raise it (set it here).
      distance: "squared_euclidean" (default, the paper's and PML's) or any registered distance on
        the normalised vectors.
      reducer: default "mean". miner: must be None.
    """

    default_distance = "squared_euclidean"
    cosine_only = False

    def __init__(self, num_classes: int, embedding_size: int, softmax_scale: float = 1.0,
                 lr_multiplier: float = 1.0, distance: DistanceLike | None = None,
                 reducer: ReducerLike | None = None, miner: MinerLike | None = None,
                 name: str = "proxy_nca_loss", **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, lr_multiplier=lr_multiplier, distance=distance,
                         reducer=reducer, miner=miner, name=name, **kwargs)
        self.softmax_scale = finite("softmax_scale", softmax_scale, 0.0, True, owner="ProxyNCALoss")

    def proxy_terms(self, labels: tf.Tensor, embeddings: tf.Tensor) -> dict[str, ElementLosses]:
        return {"loss": cross_entropy(self.softmax_scale * self.scores(embeddings), labels)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "softmax_scale": self.softmax_scale}
