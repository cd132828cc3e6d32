"""A miner that may rank pairs by a distance of its own (pytorch-metric-learning's miners each have one)."""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from pddm_tf.distances import Distance, get_distance, serialize_distance
from pddm_tf.miners._base import Miner, Tuples


class OwnDistanceMiner(Miner):
    """Base of the miners with an optional `distance`: given one, the miner computes its own matrix
    from the (stopped) embeddings and ranks by `distance.to_dissimilarity` of it; without one it
    ranks by the dissimilarities the loss passes (Euclidean of the stopped embeddings when called
    alone). Margins and thresholds are on that dissimilarity's scale (1 - S for the cosine similarity).
    """

    def __init__(self, distance: str | dict[str, Any] | Distance | None = None) -> None:
        self.distance = None if distance is None else get_distance(distance)

    def __call__(self, labels: tf.Tensor, embeddings: tf.Tensor, distances: tf.Tensor | None = None,
                 ref_embeddings: tf.Tensor | None = None, ref_labels: tf.Tensor | None = None) -> Tuples:
        if self.distance is not None:
            stopped = tf.stop_gradient(tf.convert_to_tensor(embeddings))
            matrix = (self.distance.pairwise(stopped) if ref_embeddings is None
                      else self.distance.pairwise(stopped, tf.stop_gradient(tf.convert_to_tensor(ref_embeddings))))
            distances = self.distance.to_dissimilarity(matrix)
        return super().__call__(labels, embeddings, distances, ref_embeddings, ref_labels)

    def get_config(self) -> dict[str, Any]:
        return {"distance": None if self.distance is None else serialize_distance(self.distance)}


def finite(owner: str, name: str, value: Any) -> float:
    """`value` as a float; ValueError naming `owner.name` unless it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)
