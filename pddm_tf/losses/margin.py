"""Margin loss (Wu, Manmatha, Smola & Krähenbühl, ICCV 2017) on triplets from any miner: by default
distance-weighted sampling, or the Divide-and-Conquer authors' sampler."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import (
    ElementLosses,
    EmbeddingLoss,
    LossBatch,
    finite_number,
)
from pddm_tf.miners import DistanceWeightedMiner, Miner, Tuples
from pddm_tf.reducers import Reducer

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
    * any other registered miner (pair-form tuples are read as every triplet they make).

    With distances D (default Euclidean) and beta_a the boundary of the anchor's class (or one
    global beta), the per-element terms are the 2t hinges

        max(0, D_ap - beta_a + alpha)  and  max(0, beta_a - D_an + alpha)

    and L = reducer(hinges, extra = nu sum_t beta_a). The default `AvgNonZeroReducer` gives today's
    (and the authors' code's) ( sum hinges + nu sum_t beta_a ) / max(#non-zero hinges, 1): the beta
    regulariser is summed over triplets and shares the division. With a similarity S (larger is
    closer) the hinges are max(0, beta_a - S_ap + alpha) and max(0, S_an - beta_a + alpha).
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
      distance: D, any `pddm_tf.distances` distance or similarity (default "euclidean"; the
        distance-weighted sampler assumes Euclidean distances of unit embeddings).
      reducer: a `pddm_tf.reducers` reducer (default "avg_non_zero", today's behaviour).
    """

    default_distance = "euclidean"
    default_reducer = "avg_non_zero"
    requires_miner = True

    def __init__(self, alpha: float = 0.2, beta: float = 1.2, learn_beta: bool = True,
                 num_classes: int | None = None, nu: float = 0.0,
                 miner: str | dict[str, Any] | Miner = "distance_weighted",
                 distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 name: str = "margin_loss", **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        self.alpha = finite_number("MarginLoss", "alpha", alpha)
        self.initial_beta = finite_number("MarginLoss", "beta", beta)
        self.nu = finite_number("MarginLoss", "nu", nu)
        if self.alpha < 0 or self.nu < 0:
            raise ValueError(f"alpha and nu must be non-negative, got {alpha} and {nu}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        self.learn_beta = bool(learn_beta)
        self.num_classes = None if num_classes is None else int(num_classes)
        shape: tuple[int, ...] = () if self.num_classes is None else (self.num_classes,)
        self.beta = keras.Variable(np.full(shape, beta), dtype=self.dtype, trainable=self.learn_beta,
                                   name="beta")

    @property
    def variables(self) -> list[keras.Variable]:
        """The loss's state, for the model to track: [beta] (trained if `learn_beta`), then the miner's
        (a seeded sampler's position), so that it is saved and restored with the model's weights
        (a resumed run draws the negatives an uninterrupted one would)."""
        return [self.beta, *super().variables]

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        assert tuples is not None  # requires_miner
        tuples = tuples.to_triplets()
        beta = self._beta_of(tf.gather(batch.labels, tuples.anchors))
        d_ap = batch.pair_values(tuples.anchors, tuples.positives)
        d_an = batch.pair_values(tuples.anchors, tuples.negatives)
        pull = tf.nn.relu(self.distance.farther(d_ap, beta) + self.alpha)
        push = tf.nn.relu(self.distance.farther(beta, d_an) + self.alpha)
        return {"margin": ElementLosses(tf.concat([pull, push], 0), extra=self.nu * tf.reduce_sum(beta))}

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
                "learn_beta": self.learn_beta, "num_classes": self.num_classes, "nu": self.nu}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MarginLoss:
        config = dict(config)
        if "sampler" in config:  # configs saved before miners were objects
            sampler, cutoff = config.pop("sampler"), config.pop("cutoff", 0.5)
            nonzero_loss_cutoff, seed = config.pop("nonzero_loss_cutoff", 1.4), config.pop("seed", None)
            config["miner"] = (DistanceWeightedMiner(cutoff, nonzero_loss_cutoff, seed)
                               if sampler == "distance_weighted" else {"name": sampler, "config": {"cutoff": cutoff}})
        return cls(**config)
