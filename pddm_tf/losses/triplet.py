"""Triplet loss on mined triplets: semi-hard (FaceNet), batch-hard (Hermans et al.) or any miner."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance, get_distance
from pddm_tf.losses._base import EmbeddingLoss
from pddm_tf.miners import Miner, Tuples, get_miner, serialize_miner

#: The miners the triplet methods of the CLI use; any registered miner works.
TRIPLET_MINING = ("semi_hard", "batch_hard")


@keras.saving.register_keras_serializable(package="pddm_tf")
class TripletLoss(EmbeddingLoss):
    """Triplet hinge max(0, margin + D_ap - D_an), by default on Euclidean distances D = ||f_a - f_x||,
    averaged over the triplets (a, p, n) that `miner` returns (zero hinges included).

    miner="semi_hard" (Schroff et al., FaceNet, CVPR 2015; TensorFlow Addons'
    `triplet_semihard_loss`): every ordered positive pair (a, p) with the negative chosen by
    `pddm_tf.miners.mining.semi_hard_negatives` (closest negative farther than p, else the farthest
    negative). Differences from TFA: the default margin is 0.2 (TFA: 1.0) and an anchor with no
    negative yields no triplet (TFA would compare it with itself), so a batch without one gives 0.

    miner="batch_hard" (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017): one triplet
    per anchor with its farthest positive and closest negative (hard margin variant, not the
    soft-plus one).

    Any other `pddm_tf.miners` miner (or its registered name) works the same way. Mining runs on
    stopped distances of this loss's `distance`; the gradient flows through the selected D_ap and D_an.
    Usage: `loss(labels [m] int, embeddings [m, d] L2-normalised) -> scalar`; `from_indices` and
    `from_embeddings` evaluate given triplets.

    Args:
      margin: the hinge margin, on the distance's scale (unit embeddings: D in [0, 2] for
        "euclidean", [0, 4] for "squared_euclidean", [0, 2] for "cosine").
      miner: a `pddm_tf.miners.Miner` or its registered name ("semi_hard", "batch_hard", ...).
      distance: D, a `pddm_tf.distances` name ("euclidean", "squared_euclidean", "cosine") or a
        registered `Distance`; mining ranks by it too.

    Example (points 0, 1 | 1.5, 3 on a line; batch-hard triplets (0, 1, 2), (1, 0, 2), (2, 3, 1),
    (3, 2, 1) have hinges 0, 0.7, 1.2 and 0):
      >>> loss = TripletLoss(margin=0.2, miner="batch_hard")
      >>> round(float(loss(tf.constant([0, 0, 1, 1]), tf.constant([[0.0], [1.0], [1.5], [3.0]]))), 4)
      0.475
    """

    def __init__(self, margin: float = 0.2, miner: str | dict[str, Any] | Miner = "semi_hard",
                 distance: str | Distance = "euclidean", name: str = "triplet_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if margin < 0:
            raise ValueError(f"margin must be non-negative, got {margin}")
        self.margin = float(margin)
        self.miner = get_miner(miner)
        self.distance = get_distance(distance)

    @property
    def variables(self) -> list[keras.Variable]:
        """The miner's state (a seeded sampler's position), for the model to save."""
        return self.miner.variables

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        d = self.distance.pairwise(embeddings)
        return self.from_indices(self.miner(labels, embeddings, d), distances=d)

    def from_indices(self, tuples: Tuples, embeddings: tf.Tensor | None = None,
                     distances: tf.Tensor | None = None) -> tf.Tensor:
        """The loss of given triplets of a batch: `Tuples` of t rows, with the batch's [m, m] distances
        (gathered, as `compute` does) or its embeddings [m, d] (then only the 2t distances are computed)."""
        if distances is not None:
            d_ap = tf.gather_nd(distances, tf.stack([tuples.anchors, tuples.positives], axis=1))
            d_an = tf.gather_nd(distances, tf.stack([tuples.anchors, tuples.negatives], axis=1))
            return self._hinge(d_ap, d_an)
        if embeddings is None:
            raise ValueError("from_indices needs the batch's embeddings or its distances")
        anchor = tf.gather(embeddings, tuples.anchors)
        return self.from_embeddings(anchor, tf.gather(embeddings, tuples.positives),
                                    tf.gather(embeddings, tuples.negatives))

    def from_embeddings(self, anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tf.Tensor:
        """The loss of t triplets given as embeddings, [t, d] each (e.g. synthetic negatives) -> scalar."""
        return self._hinge(self.distance.paired(anchor, positive), self.distance.paired(anchor, negative))

    def _hinge(self, d_ap: tf.Tensor, d_an: tf.Tensor) -> tf.Tensor:
        hinge = tf.nn.relu(self.margin + d_ap - d_an)
        return tf.reduce_sum(hinge) / tf.maximum(tf.cast(tf.size(hinge), hinge.dtype), 1.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "miner": serialize_miner(self.miner),
                "distance": self.distance.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TripletLoss:
        config = dict(config)
        if "mining" in config:  # configs saved before miners were objects
            config["miner"] = config.pop("mining")
        return cls(**config)
