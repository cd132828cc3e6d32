"""Margin loss (Wu, Manmatha, Smola & Krähenbühl, ICCV 2017) on triplets from any miner: by default
distance-weighted sampling, or the Divide-and-Conquer authors' sampler."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pddm_tf.distances import pairwise_distances
from pddm_tf.losses._base import EmbeddingLoss
from pddm_tf.miners import DistanceWeightedMiner, Miner, Tuples, get_miner, serialize_miner

#: The negative samplers of `MarginLoss`: registered names of `pddm_tf.miners`.
MARGIN_SAMPLERS = ("distance_weighted", "closest_beyond_cutoff")


@keras.saving.register_keras_serializable(package="pddm_tf")
class MarginLoss(EmbeddingLoss):
    """Margin loss of "Sampling Matters in Deep Embedding Learning" (METHODS.md section 4).

    Triplets (a, p, n) come from `miner`:
    * "distance_weighted" (default, `pddm_tf.miners.DistanceWeightedMiner`): every ordered positive
      pair (a, p) with a negative drawn with probability ~ q(D_an)^-1, the margin-loss paper's sampler;
    * "closest_beyond_cutoff" (`pddm_tf.miners.ClosestBeyondCutoffMiner`): the Divide-and-Conquer
      authors' released sampler (METHODS.md section 7), deterministic: anchor a's P_a closest
      negatives at distance >= 0.5, paired one to one with its P_a positives;
    * any other registered miner.

    With Euclidean distances D and beta_a the boundary of the anchor's class (or one global beta):

        L = ( sum_t [max(0, D_ap - beta_a + alpha) + max(0, beta_a - D_an + alpha)] + nu sum_t beta_a )
            / max(#non-zero terms, 1)

    As in the authors' code, the beta regulariser is summed over triplets and shares the division.
    beta is a `keras.Variable` listed in `variables` (with the miner's state), so `MetricLossModel`
    trains it with the network (`learn_beta=False` keeps it fixed: the DCES setting). Mining runs
    on stopped distances; `from_indices` evaluates the loss for given triplets.
    Usage: `loss(labels [m] int, embeddings [m, d] L2-normalised) -> scalar`.

    Args:
      alpha: margin around the boundary beta.
      beta: initial boundary (unit embeddings: D in [0, 2]).
      learn_beta: whether beta is trainable.
      num_classes: None for one scalar beta; else beta has shape [num_classes], indexed by the
        anchor's label (labels must lie in [0, num_classes)).
      nu: weight of the beta regulariser.
      miner: a `pddm_tf.miners.Miner`, its registered name or `serialize_miner`'s dict. The default
        is `DistanceWeightedMiner()`: unseeded, it draws with TensorFlow's stateful sampler, whose
        position cannot be saved; `DistanceWeightedMiner(seed=0)` makes the draws reproducible.
    """

    def __init__(self, alpha: float = 0.2, beta: float = 1.2, learn_beta: bool = True,
                 num_classes: int | None = None, nu: float = 0.0,
                 miner: str | dict[str, Any] | Miner = "distance_weighted", name: str = "margin_loss",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if alpha < 0 or nu < 0:
            raise ValueError(f"alpha and nu must be non-negative, got {alpha} and {nu}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive or None, got {num_classes}")
        self.alpha = float(alpha)
        self.initial_beta = float(beta)
        self.learn_beta = bool(learn_beta)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.nu = float(nu)
        self.miner = get_miner(miner)
        shape: tuple[int, ...] = () if self.num_classes is None else (self.num_classes,)
        self.beta = keras.Variable(np.full(shape, beta), dtype=self.dtype, trainable=self.learn_beta,
                                   name="beta")

    @property
    def variables(self) -> list[keras.Variable]:
        """The loss's state, for the model to track: [beta] (trained if `learn_beta`), then the miner's
        (a seeded sampler's position), so that it is saved and restored with the model's weights
        (a resumed run draws the negatives an uninterrupted one would)."""
        return [self.beta, *self.miner.variables]

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        d = pairwise_distances(embeddings)
        return self.from_indices(labels, self.miner(labels, embeddings, d), d)

    def from_indices(self, labels: tf.Tensor, tuples: Tuples, distances: tf.Tensor) -> tf.Tensor:
        """The margin loss of given triplets: labels [m], `Tuples` of the batch, its distances [m, m]."""
        beta = self._beta_of(tf.gather(labels, tuples.anchors))
        d_ap = tf.gather_nd(distances, tf.stack([tuples.anchors, tuples.positives], axis=1))
        d_an = tf.gather_nd(distances, tf.stack([tuples.anchors, tuples.negatives], axis=1))
        pull = tf.nn.relu(d_ap - beta + self.alpha)
        push = tf.nn.relu(beta - d_an + self.alpha)
        nonzero = tf.reduce_sum(tf.cast(pull > 0, pull.dtype)) + tf.reduce_sum(tf.cast(push > 0, push.dtype))
        total = tf.reduce_sum(pull) + tf.reduce_sum(push) + self.nu * tf.reduce_sum(beta)
        return total / tf.maximum(nonzero, 1.0)

    def _beta_of(self, anchor_labels: tf.Tensor) -> tf.Tensor:
        """beta for each triplet, [t]: the anchor class's entry, or the scalar broadcast."""
        beta = tf.convert_to_tensor(self.beta)
        if self.num_classes is None:
            return beta * tf.ones_like(anchor_labels, beta.dtype)
        checks = [tf.debugging.assert_less(anchor_labels, self.num_classes,
                                           message="MarginLoss: a label is >= num_classes"),
                  tf.debugging.assert_non_negative(anchor_labels, message="MarginLoss: negative label")]
        with tf.control_dependencies(checks):
            return tf.gather(beta, anchor_labels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.initial_beta,
                "learn_beta": self.learn_beta, "num_classes": self.num_classes, "nu": self.nu,
                "miner": serialize_miner(self.miner)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MarginLoss:
        config = dict(config)
        if "sampler" in config:  # configs saved before miners were objects
            sampler, cutoff = config.pop("sampler"), config.pop("cutoff", 0.5)
            nonzero_loss_cutoff, seed = config.pop("nonzero_loss_cutoff", 1.4), config.pop("seed", None)
            config["miner"] = (DistanceWeightedMiner(cutoff, nonzero_loss_cutoff, seed)
                               if sampler == "distance_weighted" else {"name": sampler, "config": {"cutoff": cutoff}})
        return cls(**config)
