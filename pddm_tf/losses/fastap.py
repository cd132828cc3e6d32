"""FastAP (Cakir, He, Xia, Kulis & Sclaroff, "Deep Metric Learning to Rank", CVPR 2019)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance, l2_normalize
from pddm_tf.losses._base import ElementLosses, EmbeddingLoss, LossBatch
from pddm_tf.miners import Miner, Tuples
from pddm_tf.reducers import Reducer

#: The largest value each accepted distance takes between unit vectors: the histogram's range.
_RANGES = {"squared_euclidean": 4.0, "euclidean": 2.0, "cosine": 2.0}


@keras.saving.register_keras_serializable(package="pddm_tf")
class FastAPLoss(EmbeddingLoss):
    """FastAP: 1 - a differentiable histogram approximation of each anchor's average precision
    (the paper's eq. 9-11; METHODS.md section 10).

    The embeddings are L2-normalised, so the distance D (default squared Euclidean, in [0, 4]) has a
    known range [0, R], cut into `num_bins` bins of width delta = R / num_bins with centres
    z_b = b delta, b = 0..num_bins. Each pair is soft-assigned to the bins by the triangular kernel
    max(0, 1 - |D - z_b| / delta). For anchor i with positive histogram h+_b, all-pair histogram h_b
    and their cumulative sums H+_b, H_b:

        AP_i = 1/|P_i| sum_b h+_b H+_b / H_b       (bins with h+_b H+_b = 0 or H_b = 0 skipped)
        L_i = 1 - AP_i                             (for the anchors with a positive; 0 without a negative)

    The default reducer is `MeanReducer` over the anchors with a positive, as pytorch-metric-learning's
    (which also normalises and uses squared Euclidean distance); a batch without a positive pair gives
    0. With a `miner`, the pairs its tuples name.

    Args:
      num_bins: the histogram's bins (paper and pytorch-metric-learning: 10).
      distance: "squared_euclidean" (default), "euclidean" or "cosine" (a distance with a range on
        the unit sphere); others are refused.
      reducer: default "mean". miner: None (all pairs) or a `pddm_tf.miners.Miner`.
    """

    default_distance = "squared_euclidean"
    default_reducer = "mean"
    distance_kinds = ("distance",)

    def __init__(self, num_bins: int = 10, distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 miner: str | dict[str, Any] | Miner | None = None, name: str = "fastap_loss", **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"FastAPLoss: num_bins must be an integer >= 1, got {num_bins!r}")
        self.num_bins = num_bins

    def check_distance(self, distance: Distance) -> None:
        super().check_distance(distance)
        if distance.name not in _RANGES:
            raise ValueError(f"FastAPLoss bins a distance of known range on unit vectors ({', '.join(_RANGES)}); "
                             f"got {distance!r}")

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        positive, negative = batch.pair_masks() if tuples is None else batch.tuple_masks(tuples)
        unit = l2_normalize(batch.embeddings)
        matrix = (self.distance.pairwise(unit, l2_normalize(batch.ref_embeddings)) if batch.has_ref
                  else self.distance.pairwise(unit))
        delta = _RANGES[self.distance.name] / self.num_bins
        centres = tf.range(self.num_bins + 1, dtype=matrix.dtype) * delta
        pulse = tf.nn.relu(1.0 - tf.abs(matrix[:, :, None] - centres) / delta)  # [m, n, bins + 1]
        pos_hist = tf.reduce_sum(pulse * tf.cast(positive, matrix.dtype)[:, :, None], axis=1)  # [m, bins + 1]
        all_hist = pos_hist + tf.reduce_sum(pulse * tf.cast(negative, matrix.dtype)[:, :, None], axis=1)
        product = pos_hist * tf.cumsum(pos_hist, axis=1)
        cumulative = tf.cumsum(all_hist, axis=1)
        safe = (product > 0) & (cumulative > 0)
        ap = tf.reduce_sum(tf.where(safe, product / tf.where(safe, cumulative, tf.ones_like(cumulative)),
                                    tf.zeros_like(product)), axis=1)
        count = tf.reduce_sum(tf.cast(positive, matrix.dtype), axis=1)
        # Without a negative the ranking is perfect (AP = 1 exactly, not up to the bins' rounding).
        losses = tf.where(tf.reduce_any(negative, axis=1), 1.0 - ap / tf.maximum(count, 1.0), tf.zeros_like(ap))
        # Anchors without a positive have no precision to approximate: they are not elements.
        return {"anchor": ElementLosses(losses, mask=count > 0)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_bins": self.num_bins}
