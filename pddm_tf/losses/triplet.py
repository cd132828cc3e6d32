"""Triplet loss with semi-hard (FaceNet) or batch-hard (Hermans et al.) in-batch mining."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance, get_distance
from pddm_tf.losses._base import EmbeddingLoss, masked_mean
from pddm_tf.mining import batch_hard_triplets, pair_masks, semi_hard_negatives

TRIPLET_MINING = ("semi_hard", "batch_hard")


@keras.saving.register_keras_serializable(package="pddm_tf")
class TripletLoss(EmbeddingLoss):
    """Triplet hinge max(0, margin + D_ap - D_an), by default on Euclidean distances D = ||f_a - f_x||.

    mining="semi_hard" (Schroff et al., FaceNet, CVPR 2015; TensorFlow Addons'
    `triplet_semihard_loss`): every ordered positive pair (a, p) is a triplet with the negative
    chosen by `pddm_tf.mining.semi_hard_negatives` (closest negative farther than p, else the
    farthest negative); L is the mean over those pairs, zero hinges included, as in TFA.
    Differences from TFA: the default margin is 0.2 (TFA: 1.0) and an anchor with no negative
    yields no triplet (TFA would compare it with itself), so a batch without a triplet gives 0.

    mining="batch_hard" (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017): one triplet
    per anchor with its farthest positive and closest negative; L is the mean over anchors that
    have both (hard margin variant, not the soft-plus one).

    Mining runs on stopped distances; the gradient flows through the selected D_ap and D_an.
    Usage: `loss(labels [m] int, embeddings [m, d] L2-normalised) -> scalar`.

    Args:
      margin: the hinge margin, on the distance's scale (unit embeddings: D in [0, 2] for
        "euclidean", [0, 4] for "squared_euclidean", [0, 2] for "cosine").
      mining: "semi_hard" or "batch_hard".
      distance: D, a `pddm_tf.distances` name ("euclidean", "squared_euclidean", "cosine") or a
        registered `Distance`; mining ranks by it too.
    """

    def __init__(self, margin: float = 0.2, mining: str = "semi_hard", distance: str | Distance = "euclidean",
                 name: str = "triplet_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if mining not in TRIPLET_MINING:
            raise ValueError(f"unknown triplet mining {mining!r}; expected one of {TRIPLET_MINING}")
        if margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")
        self.margin = float(margin)
        self.mining = mining
        self.distance = get_distance(distance)

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        d = self.distance.pairwise(embeddings)
        if self.mining == "semi_hard":
            positive, _ = pair_masks(labels)
            negatives, has_negative = semi_hard_negatives(labels, tf.stop_gradient(d))
            d_ap, d_an = d, tf.gather(d, negatives, batch_dims=1)  # [a, p]: D_ap and D_a,n(a,p)
            valid = positive & has_negative[:, None]
        else:
            positives, negatives, valid = batch_hard_triplets(labels, tf.stop_gradient(d))
            d_ap, d_an = tf.gather(d, positives, batch_dims=1), tf.gather(d, negatives, batch_dims=1)
        return masked_mean(tf.nn.relu(self.margin + d_ap - d_an), valid)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "mining": self.mining,
                "distance": self.distance.name}
