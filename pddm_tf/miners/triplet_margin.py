"""The triplet-margin miner (pytorch-metric-learning's TripletMarginMiner), usable with any tuple loss."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.miners._base import Tuples
from pddm_tf.miners._own_distance import OwnDistanceMiner, finite
from pddm_tf.miners.mining import pair_masks

TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


class TripletMarginMiner(OwnDistanceMiner):
    """Every triplet (a, p, n) of the batch whose margin g = D_an - D_ap (on a dissimilarity D) is of
    the chosen type, as triplet-form `Tuples` in (a, p, n) row-major order:

        "all"       g <= margin        (every triplet a margin loss would see as non-zero)
        "hard"      g <= 0             (the negative is at least as close as the positive)
        "semihard"  0 < g <= margin
        "easy"      g > margin

    The batch's m^2 (or m x n) x n candidate triplets are compared at once ([m, n, n] booleans), so
    memory grows with the cube of the batch: 64 x 4 images is 16.8M booleans.

    Args:
      margin: on D's scale (pytorch-metric-learning's default 0.2).
      type_of_triplets: one of "all", "hard", "semihard", "easy" (default "all").
      distance: the miner's own distance; None (default): the loss's (Euclidean when called alone).
    """

    name = "triplet_margin"
    supports_jit = False  # the number of triplets depends on the data

    def __init__(self, margin: float = 0.2, type_of_triplets: str = "all",
                 distance: str | dict[str, Any] | Distance | None = None) -> None:
        super().__init__(distance)
        self.margin = finite("TripletMarginMiner", "margin", margin)
        if type_of_triplets not in TRIPLET_TYPES:
            raise ValueError(f"TripletMarginMiner: type_of_triplets must be one of {', '.join(TRIPLET_TYPES)}, "
                             f"got {type_of_triplets!r}")
        self.type_of_triplets = type_of_triplets

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        positive, negative = pair_masks(labels, ref_labels)
        gap = distances[:, None, :] - distances[:, :, None]  # [a, p, n]: D_an - D_ap
        keep = {"all": gap <= self.margin, "hard": gap <= 0.0, "semihard": (gap > 0.0) & (gap <= self.margin),
                "easy": gap > self.margin}[self.type_of_triplets]
        keep &= positive[:, :, None] & negative[:, None, :]
        rows = tf.cast(tf.where(keep), tf.int32)
        return Tuples.from_rows(rows)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "type_of_triplets": self.type_of_triplets}
