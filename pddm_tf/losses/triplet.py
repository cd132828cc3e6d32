"""Triplet loss on mined triplets: semi-hard (FaceNet), batch-hard (Hermans et al.) or any miner."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf._deprecation import warn_deprecated
from pddm_tf.distances import Distance
from pddm_tf.losses._base import (
    ElementLosses,
    EmbeddingLoss,
    LossBatch,
    finite_number,
)
from pddm_tf.miners import Miner, Tuples
from pddm_tf.reducers import Reducer

#: The miners the triplet methods of the CLI use; any registered miner works.
TRIPLET_MINING = ("semi_hard", "batch_hard")


@keras.saving.register_keras_serializable(package="pddm_tf")
class TripletLoss(EmbeddingLoss):
    """Triplet hinge max(0, margin + D_ap - D_an) over the triplets (a, p, n) that `miner` returns,
    by default on Euclidean distances D = ||f_a - f_x|| and averaged over all mined triplets, zero
    hinges included (`MeanReducer`, the default reducer).

    With a similarity S (larger is closer, e.g. "cosine_similarity") the hinge is
    max(0, margin + S_an - S_ap) (`Distance.farther`). The per-element terms are the t hinges,
    reduced by `reducer`.

    miner="semi_hard" (Schroff et al., FaceNet, CVPR 2015; TensorFlow Addons'
    `triplet_semihard_loss`): every ordered positive pair (a, p) with the negative chosen by
    `pddm_tf.miners.mining.semi_hard_negatives` (closest negative farther than p, else the farthest
    negative). Differences from TFA: the default margin is 0.2 (TFA: 1.0) and an anchor with no
    negative yields no triplet (TFA would compare it with itself), so a batch without one gives 0.

    miner="batch_hard" (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017): one triplet
    per anchor with its farthest positive and closest negative (hard margin variant, not the
    soft-plus one).

    Any other `pddm_tf.miners` miner (or its registered name) works the same way; pair-form tuples
    are read as every triplet they make (`Tuples.to_triplets`). Mining runs on stopped distances
    of this loss's `distance`; the gradient flows through the selected D_ap and D_an.
    Usage: `loss(labels [m] int, embeddings [m, d] L2-normalised) -> scalar`; `from_indices` and
    `from_embeddings` evaluate given triplets; `ref_embeddings` / `ref_labels` (in `compute`,
    `from_indices`, or the y_pred dict) take positives and negatives from a reference set.

    Args:
      margin: the hinge margin, on the distance's scale (unit embeddings: D in [0, 2] for
        "euclidean", [0, 4] for "squared_euclidean", [0, 2] for "cosine").
      miner: a `pddm_tf.miners.Miner` or its registered name ("semi_hard", "batch_hard", ...).
      distance: D, any `pddm_tf.distances` distance or similarity (default "euclidean"); mining
        ranks by it too.
      reducer: a `pddm_tf.reducers` reducer (default "mean": today's average over all triplets).

    Example (points 0, 1 | 1.5, 3 on a line; batch-hard triplets (0, 1, 2), (1, 0, 2), (2, 3, 1),
    (3, 2, 1) have hinges 0, 0.7, 1.2 and 0):
      >>> loss = TripletLoss(margin=0.2, miner="batch_hard")
      >>> round(float(loss(tf.constant([0, 0, 1, 1]), tf.constant([[0.0], [1.0], [1.5], [3.0]]))), 4)
      0.475
    """

    default_distance = "euclidean"
    default_reducer = "mean"
    requires_miner = True

    def __init__(self, margin: float = 0.2, miner: str | dict[str, Any] | Miner = "semi_hard",
                 distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 name: str = "triplet_loss", **kwargs: Any) -> None:
        if "mining" in kwargs:
            warn_deprecated("TripletLoss(mining=...) is deprecated: use TripletLoss(miner=...)", stacklevel=2)
            miner = kwargs.pop("mining")
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        self.margin = finite_number("TripletLoss", "margin", margin)
        if self.margin < 0:
            raise ValueError(f"TripletLoss: margin must be non-negative, got {margin}")

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        assert tuples is not None  # requires_miner
        tuples = tuples.to_triplets()
        d_ap = batch.pair_values(tuples.anchors, tuples.positives)
        d_an = batch.pair_values(tuples.anchors, tuples.negatives)
        return {"triplet": ElementLosses(self._hinge(d_ap, d_an))}

    def from_embeddings(self, anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tf.Tensor:
        """The loss of t triplets given as embeddings, [t, d] each (e.g. synthetic negatives) -> scalar."""
        hinge = self._hinge(self.distance.paired(anchor, positive), self.distance.paired(anchor, negative))
        return self.reduce_terms({"triplet": ElementLosses(hinge)})

    def _hinge(self, d_ap: tf.Tensor, d_an: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(self.margin + self.distance.farther(d_ap, d_an))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TripletLoss:
        config = dict(config)
        if "mining" in config:  # configs saved before miners were objects
            config["miner"] = config.pop("mining")
        return cls(**config)
