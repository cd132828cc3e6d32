"""Margin loss (Wu, Manmatha, Smola & Krähenbühl, ICCV 2017) with distance-weighted or the
Divide-and-Conquer authors' negative sampling."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pddm_tf.distances import pairwise_distances
from pddm_tf.losses._base import EmbeddingLoss
from pddm_tf.mining import closest_negatives_beyond_cutoff, distance_weighted_negatives

#: The negative samplers of `MarginLoss`.
MARGIN_SAMPLERS = ("distance_weighted", "closest_beyond_cutoff")


@keras.saving.register_keras_serializable(package="pddm_tf")
class MarginLoss(EmbeddingLoss):
    """Margin loss of "Sampling Matters in Deep Embedding Learning" (METHODS.md section 4).

    Triplets (a, p, n): every ordered positive pair (a, p) with one negative n of a, chosen by
    `sampler`:

    * "distance_weighted" (default): drawn with probability ~ q(D_an)^-1, the margin-loss paper's
      sampler (`pddm_tf.mining.distance_weighted_negatives`);
    * "closest_beyond_cutoff": the Divide-and-Conquer authors' released sampler (METHODS.md
      section 7), deterministic: anchor a's P_a closest negatives at distance >= `cutoff`, paired
      one to one with its P_a positives (`pddm_tf.mining.closest_negatives_beyond_cutoff`).

    With Euclidean
    distances D and beta_a the boundary of the anchor's class (or one global beta):

        L = ( sum_t [max(0, D_ap - beta_a + alpha) + max(0, beta_a - D_an + alpha)] + nu sum_t beta_a )
            / max(#non-zero terms, 1)

    As in the authors' code, the beta regulariser is summed over triplets and shares the division.
    beta is a `keras.Variable` listed in `variables`, so `MetricLossModel` trains it with the
    network (`learn_beta=False` keeps it fixed: the DCES setting). Sampling runs on stopped
    distances; `from_triplets` evaluates the loss for given triplets (deterministic).
    Usage: `loss(labels [m] int, embeddings [m, d] L2-normalised) -> scalar`.

    Args:
      alpha: margin around the boundary beta.
      beta: initial boundary (unit embeddings: D in [0, 2]).
      learn_beta: whether beta is trainable.
      num_classes: None for one scalar beta; else beta has shape [num_classes], indexed by the
        anchor's label (labels must lie in [0, num_classes)).
      nu: weight of the beta regulariser.
      sampler: "distance_weighted" or "closest_beyond_cutoff" (see above).
      cutoff: distance floor of both samplers (distance-weighted: weights are computed at
        max(D, cutoff); closest_beyond_cutoff: negatives closer than this are only used to complete
        an anchor's list).
      nonzero_loss_cutoff: distance-weighted sampling ignores negatives at least this far.
      seed: None draws with TensorFlow's stateful sampler, whose position cannot be saved; an int
        makes the draws reproducible (stateless sampling with seeds from a
        `keras.random.SeedGenerator`, advanced every call, whose state is listed in `variables`).
    """

    def __init__(self, alpha: float = 0.2, beta: float = 1.2, learn_beta: bool = True,
                 num_classes: int | None = None, nu: float = 0.0, cutoff: float = 0.5,
                 nonzero_loss_cutoff: float = 1.4, seed: int | None = None, sampler: str = "distance_weighted",
                 name: str = "margin_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if sampler not in MARGIN_SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {MARGIN_SAMPLERS}")
        if alpha < 0 or nu < 0:
            raise ValueError(f"alpha and nu must be non-negative, got {alpha} and {nu}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive or None, got {num_classes}")
        if cutoff < 0.0 or (sampler == "distance_weighted" and cutoff >= nonzero_loss_cutoff):
            raise ValueError(f"need 0 <= cutoff < nonzero_loss_cutoff, got {cutoff} and {nonzero_loss_cutoff}")
        self.alpha = float(alpha)
        self.initial_beta = float(beta)
        self.learn_beta = bool(learn_beta)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.nu = float(nu)
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.seed = seed
        self.sampler = sampler
        shape: tuple[int, ...] = () if self.num_classes is None else (self.num_classes,)
        self.beta = keras.Variable(np.full(shape, beta), dtype=self.dtype, trainable=self.learn_beta,
                                   name="beta")
        self._seed_generator = None if seed is None else keras.random.SeedGenerator(seed)

    @property
    def variables(self) -> list[keras.Variable]:
        """The loss's state, for the model to track: [beta] (trained if `learn_beta`), then, with a
        seed, the sampler's seed state, so that it is saved and restored with the model's weights
        (a resumed run draws the negatives an uninterrupted one would)."""
        return [self.beta] + ([self._seed_generator.state] if self._seed_generator is not None else [])

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        d = pairwise_distances(embeddings)
        triplets = self.sample_triplets(labels, tf.stop_gradient(d), tf.shape(embeddings)[1])
        return self.from_triplets(labels, d, triplets)

    def sample_triplets(self, labels: tf.Tensor, distances: tf.Tensor, dim: int | tf.Tensor) -> tf.Tensor:
        """The sampler's triplets [t, 3] (anchor, positive, negative) from [m, m] distances of
        `dim`-dimensional unit embeddings."""
        if self.sampler == "closest_beyond_cutoff":
            return closest_negatives_beyond_cutoff(labels, distances, self.cutoff)
        seed = None if self._seed_generator is None else self._seed_generator.next()
        return distance_weighted_negatives(labels, distances, dim, self.cutoff, self.nonzero_loss_cutoff, seed)

    def from_triplets(self, labels: tf.Tensor, distances: tf.Tensor, triplets: tf.Tensor) -> tf.Tensor:
        """The margin loss of given triplets: labels [m], distances [m, m], triplets [t, 3] -> scalar."""
        anchor, positive, negative = tf.unstack(tf.convert_to_tensor(triplets, tf.int32), num=3, axis=1)
        beta = self._beta_of(tf.gather(labels, anchor))
        d_ap = tf.gather_nd(distances, tf.stack([anchor, positive], axis=1))
        d_an = tf.gather_nd(distances, tf.stack([anchor, negative], axis=1))
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
                "cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff, "seed": self.seed,
                "sampler": self.sampler}
