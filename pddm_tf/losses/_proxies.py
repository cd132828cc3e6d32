"""What the proxy and classification-margin losses share: proxies owned by the loss as trainable
weights, their learning-rate multiplier, hyperparameter checks and the embedding-to-proxy scores.

A proxy loss holds `num_classes * proxies_per_class` learnable vectors of size `embedding_size`
(row `c * proxies_per_class + k` is proxy k of class c). They are a `keras.Variable` listed in the
loss's `variables`, so `MetricLossModel` / `ProxyLossModel` track them as model weights: saved with
the model and its checkpoints, restored on resume. `lr_multiplier` is the factor the papers apply
to the proxies' learning rate (Proxy-Anchor: 100); `pddm_tf.ProxyLossModel` applies it with a
second optimiser (see docs/loss_conventions.md, "Proxy and classification losses").
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance, get_distance, l2_normalize, pairwise_squared_distances
from pddm_tf.losses._base import EmbeddingLoss


def finite(name: str, value: Any, low: float | None = None, low_open: bool = False,
           high: float | None = None, owner: str = "") -> float:
    """`value` as a float, or a one-line ValueError naming `name` when it is not a finite number
    within [low, high] ((low, high] with `low_open`)."""
    where = f"{owner}: " if owner else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{where}{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{where}{name} must be <= {high}, got {value}")
    return value


def positive_int(name: str, value: Any, owner: str) -> int:
    """`value` as an int >= 1, or a one-line ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


class ProxyLoss(EmbeddingLoss):
    """Base of the losses with learnable class proxies: `loss(labels [m] int in [0, num_classes),
    embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C, the number of training classes (labels must lie in [0, C)).
      embedding_size: d, the embeddings' size.
      proxies_per_class: K, proxies (centres, sub-centres) per class.
      lr_multiplier: factor on the proxies' learning rate, applied by `ProxyLossModel`.
      distance: how embeddings are scored against proxies; the subclass lists the ones it takes in
        `distances` (the cosine-defined losses take only "cosine").
    """

    #: The distances a subclass accepts (the first is its default).
    distances: tuple[str, ...] = ("cosine",)
    #: The proxies' initialiser; He normal on the [C*K, d] matrix is PyTorch's kaiming_normal_
    #: with mode="fan_out" on it, the Proxy-Anchor authors' (and pytorch-metric-learning's) choice.
    initializer: str = "he_normal"

    def __init__(self, num_classes: int, embedding_size: int, proxies_per_class: int = 1,
                 lr_multiplier: float = 1.0, distance: str | Distance | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_classes = positive_int("num_classes", num_classes, owner)
        self.embedding_size = positive_int("embedding_size", embedding_size, owner)
        self.proxies_per_class = positive_int("proxies_per_class", proxies_per_class, owner)
        self.lr_multiplier = finite("lr_multiplier", lr_multiplier, 0.0, True, owner=owner)
        self.distance = get_distance(self.distances[0] if distance is None else distance)
        if self.distance.name not in self.distances:
            raise ValueError(f"{owner} is defined on {' or '.join(self.distances)} scores, not on the "
                             f"{self.distance.name!r} distance")
        self.proxies = keras.Variable(
            keras.initializers.get(self.initializer)((self.num_classes * self.proxies_per_class,
                                                      self.embedding_size)),
            dtype=self.dtype, trainable=True, name="proxies")

    @property
    def variables(self) -> list[keras.Variable]:
        """[proxies]: the model tracks them as its weights (saved, restored, trained)."""
        return [self.proxies]

    @property
    def proxy_variables(self) -> list[keras.Variable]:
        """The variables trained at `lr_multiplier` times the learning rate (`ProxyLossModel`)."""
        return [self.proxies]

    def checked(self, labels: tf.Tensor, embeddings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """labels [m] int32 and embeddings [m, d] in the proxies' dtype, asserting in the graph that
        every label is a proxy's class and that d is the proxies' size."""
        owner = type(self).__name__
        if embeddings.shape[-1] is not None and embeddings.shape[-1] != self.embedding_size:
            raise ValueError(f"{owner} was built for embedding_size={self.embedding_size}, got embeddings of "
                             f"size {embeddings.shape[-1]}")
        checks = [tf.debugging.assert_less(labels, self.num_classes,
                                           message=f"{owner}: a label is >= num_classes={self.num_classes}"),
                  tf.debugging.assert_non_negative(labels, message=f"{owner}: a label is negative")]
        with tf.control_dependencies(checks):
            return tf.identity(labels), tf.cast(embeddings, self.proxies.dtype)

    def scores(self, embeddings: tf.Tensor) -> tf.Tensor:
        """[m, C*K] scores of every embedding against every proxy, larger = closer: the cosine
        similarity, or minus the distance between L2-normalised vectors (squared Euclidean in
        [0, 4], Euclidean in [0, 2]). Norms are floored (`l2_normalize`), so a zero row scores 0."""
        x, p = l2_normalize(embeddings), l2_normalize(tf.convert_to_tensor(self.proxies))
        if self.distance.name == "cosine":
            return tf.matmul(x, p, transpose_b=True)
        squared = pairwise_squared_distances(x, p)
        if self.distance.name == "squared_euclidean":
            return -squared
        # sqrt floored like safe_norm: a coincident embedding and proxy keep a finite gradient.
        return -tf.sqrt(tf.maximum(squared, 1e-12))

    def class_scores(self, embeddings: tf.Tensor) -> tf.Tensor:
        """[m, C, K] `scores` grouped by class."""
        return tf.reshape(self.scores(embeddings), [-1, self.num_classes, self.proxies_per_class])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "embedding_size": self.embedding_size,
                "lr_multiplier": self.lr_multiplier, "distance": self.distance.name}


def mean_cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of -log softmax(logits_i)[y_i]: logits [m, C], labels [m] -> scalar; 0 for
    an empty batch (pytorch-metric-learning's MeanReducer)."""
    per_element = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    count = tf.cast(tf.size(per_element), per_element.dtype)
    return tf.reduce_sum(per_element) / tf.maximum(count, 1.0)
