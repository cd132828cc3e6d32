"""Distance-weighted negative sampling (Wu et al., ICCV 2017)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.miners._base import Miner, Tuples
from pddm_tf.miners.mining import distance_weighted_negatives


class DistanceWeightedMiner(Miner):
    """Every ordered positive pair (a, p) whose anchor has a negative, with a negative drawn with
    probability ~ q(D_an)^-1 (`pddm_tf.miners.mining.distance_weighted_negatives`, which gives the
    density q on the unit sphere of the embedding dimension). Rows in row-major (anchor, positive)
    order; groups = t.

    Args:
      cutoff: weights are computed at max(D, cutoff).
      nonzero_loss_cutoff: negatives at least this far are not drawn (unless an anchor has no other).
      seed: None draws with TensorFlow's stateful sampler, whose position cannot be saved; an int
        makes the draws reproducible (stateless draws from a `keras.random.SeedGenerator`, advanced
        every call, whose state is in `variables` for the model to save and restore).
    """

    name = "distance_weighted"
    # tf.random.(stateless_)categorical has no XLA CPU kernel.
    supports_jit = False

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, seed: int | None = None) -> None:
        if not 0.0 <= cutoff < nonzero_loss_cutoff:
            raise ValueError(f"need 0 <= cutoff < nonzero_loss_cutoff, got {cutoff} and {nonzero_loss_cutoff}")
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.seed = seed
        self._seed_generator = None if seed is None else keras.random.SeedGenerator(seed)

    @property
    def variables(self) -> list[keras.Variable]:
        return [] if self._seed_generator is None else [self._seed_generator.state]

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        seed = None if self._seed_generator is None else self._seed_generator.next()
        return Tuples.from_rows(distance_weighted_negatives(labels, distances, embedding_dim, self.cutoff,
                                                            self.nonzero_loss_cutoff, seed, ref_labels))

    def get_config(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff, "seed": self.seed}
