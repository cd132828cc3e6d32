"""SoftTriple loss (Qian, Shang, Sun, Hu, Li & Jin, "SoftTriple Loss: Deep Metric Learning Without
Triplet Sampling", ICCV 2019)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import l2_normalize
from pddm_tf.losses._base import DistanceLike, ElementLosses, MinerLike, ReducerLike
from pddm_tf.losses._proxies import ProxyLoss, cross_entropy, finite, positive_int

#: The constant under the regulariser's square root (the authors' code: 1e-5). Coinciding centres,
#: which the regulariser drives towards, would otherwise give sqrt(0) and an infinite derivative.
SQRT_FLOOR = 1e-5


@keras.saving.register_keras_serializable(package="pddm_tf")
class SoftTripleLoss(ProxyLoss):
    """SoftTriple: a softmax over classes whose similarity is a soft maximum over K centres per class.

    With s_ick = cos(x_i, w_c^k) (Qian et al. 2019):

        S'_ic = sum_k softmax_k(s_ick / gamma) s_ick
        L_i = -log( exp(la (S'_iy - delta)) / (exp(la (S'_iy - delta)) + sum_{c != y} exp(la S'_ic)) )

    per embedding, reduced by `reducer` (default "mean"): pytorch-metric-learning's
    `SoftTripleLoss` (same names, defaults and reduction); METHODS.md section 10, eq. (10.6). With
    `center_regularizer` tau > 0 the paper's regulariser on the unit centres w_c^k is added once
    per batch, outside the reducer (METHODS.md section 10, eq. (10.7)):

        L = reducer(L_i) + tau / (C K (K - 1)) sum_c sum_{t < s} sqrt(2 + 1e-5 - 2 w_c^t . w_c^s)

    i.e. the distances between the centres of each class (an L2,1 penalty: similar centres merge,
    so a class uses as many centres as its data needs). tau = 0 (the default, as PML's
    `SoftTripleLoss` without `weight_regularizer`) is the loss without it; the paper uses 0.2.
    Usage: `loss(labels [m] int in [0, C), embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C. embedding_size: d.
      centers_per_class: K (paper and PML: 10).
      la: lambda, the scale of the class logits (paper and PML: 20).
      gamma: the temperature of the soft assignment to centres (paper and PML: 0.1).
      margin: delta (paper and PML: 0.01).
      center_regularizer: tau, the regulariser's weight (>= 0; paper: 0.2; default 0: off, as in
        PML). Needs centers_per_class >= 2 when > 0 (one centre per class has no pair to merge).
      lr_multiplier: the centres' learning-rate factor; 100 as in the authors' released command
        (centres at 1e-2, network at 1e-4).
      distance: "cosine_similarity" (default) or "cosine" (the loss is defined on cosines).
      reducer: default "mean". miner: must be None.
    """

    def __init__(self, num_classes: int, embedding_size: int, centers_per_class: int = 10, la: float = 20.0,
                 gamma: float = 0.1, margin: float = 0.01, lr_multiplier: float = 100.0,
                 center_regularizer: float = 0.0, distance: DistanceLike | None = None,
                 reducer: ReducerLike | None = None, miner: MinerLike | None = None, name: str = "soft_triple_loss",
                 **kwargs: Any) -> None:
        centers_per_class = positive_int("centers_per_class", centers_per_class, "SoftTripleLoss")
        super().__init__(num_classes, embedding_size, proxies_per_class=centers_per_class,
                         lr_multiplier=lr_multiplier, distance=distance, reducer=reducer, miner=miner, name=name,
                         **kwargs)
        self.centers_per_class = centers_per_class
        self.la = finite("la", la, 0.0, True, owner="SoftTripleLoss")
        self.gamma = finite("gamma", gamma, 0.0, True, owner="SoftTripleLoss")
        self.margin = finite("margin", margin, owner="SoftTripleLoss")
        self.center_regularizer = finite("center_regularizer", center_regularizer, 0.0, owner="SoftTripleLoss")
        if self.center_regularizer > 0 and centers_per_class == 1:
            raise ValueError(f"SoftTripleLoss: center_regularizer={self.center_regularizer} needs centers_per_class "
                             ">= 2 (it pulls together the centres of a class; with one centre it is 0)")

    def proxy_terms(self, labels: tf.Tensor, embeddings: tf.Tensor) -> dict[str, ElementLosses]:
        s = self.cosines(embeddings)                                        # [m, C, K]
        soft = tf.reduce_sum(tf.nn.softmax(s / self.gamma, axis=-1) * s, axis=-1)
        margin = self.margin * tf.one_hot(labels, self.num_classes, dtype=soft.dtype)
        return {"loss": cross_entropy(self.la * (soft - margin), labels)}

    def reduce_terms(self, terms: dict[str, ElementLosses]) -> tf.Tensor:
        """The reduced cross-entropy, plus tau R / (C K (K - 1)) when tau > 0. The regulariser is a
        term on the weights, not on the batch's elements, so it bypasses the reducer (as PML's
        weight regularisers have their own); under a strategy every replica computes the same
        global loss, so it is counted once."""
        total = super().reduce_terms(terms)
        if self.center_regularizer == 0:
            return total
        pairs = self.num_classes * self.centers_per_class * (self.centers_per_class - 1)
        weight = self.center_regularizer / pairs
        return total + tf.cast(weight * self.center_distances(), total.dtype)

    def center_distances(self) -> tf.Tensor:
        """R = sum_c sum_{t < s} sqrt(2 + 1e-5 - 2 w_c^t . w_c^s) over the unit centres (a scalar in
        float32, float64 for float64 proxies: in 16 bits 2 + 1e-5 rounds to 2, losing the floor)."""
        centers = tf.convert_to_tensor(self.proxies)
        if centers.dtype != tf.float64:
            centers = tf.cast(centers, tf.float32)
        centers = tf.reshape(l2_normalize(centers), [self.num_classes, self.centers_per_class, -1])
        cosines = tf.matmul(centers, centers, transpose_b=True)                    # [C, K, K]
        # Rounding can push a cosine above 1; clipping 2 - 2 cos at 0 keeps the root's argument >= floor.
        distances = tf.sqrt(tf.maximum(2.0 - 2.0 * cosines, 0.0) + SQRT_FLOOR)
        ones = tf.ones([self.centers_per_class] * 2, distances.dtype)
        upper = ones - tf.linalg.band_part(ones, -1, 0)                           # t < s
        return tf.reduce_sum(distances * upper)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "centers_per_class": self.centers_per_class, "la": self.la,
                "gamma": self.gamma, "margin": self.margin, "center_regularizer": self.center_regularizer}
