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

from typing import Any, ClassVar

import keras
import tensorflow as tf

from pddm_tf.distances import Distance, l2_normalize
from pddm_tf.losses._base import (
    DistanceLike,
    ElementLosses,
    EmbeddingLoss,
    LossBatch,
    MinerLike,
    ReducerLike,
    finite_number,
)
from pddm_tf.miners import Tuples

#: The distances on which the cosine of an embedding and a proxy can be read (cos = S or 1 - D).
COSINE_DISTANCES = ("cosine_similarity", "cosine")


def finite(name: str, value: Any, low: float | None = None, low_open: bool = False,
           high: float | None = None, owner: str = "") -> float:
    """`finite_number(owner, name, value)` (NaN, inf, bools and strings refused with one line), then
    within [low, high] ((low, high] with `low_open`), or a one-line ValueError naming `name`."""
    value = finite_number(owner, name, value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{owner}: {name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{owner}: {name} must be <= {high}, got {value}")
    return value


def positive_int(name: str, value: Any, owner: str) -> int:
    """`value` as an int >= 1, or a one-line ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


class ProxyLoss(EmbeddingLoss):
    """Base of the losses with learnable class proxies, on the loss contract: `loss(labels [m] int in
    [0, num_classes), embeddings [m, d]) -> scalar`; subclasses implement `proxy_terms(labels,
    embeddings) -> {name: ElementLosses}`, reduced by `reducer` (default "mean") and summed.

    Scores against the proxies: `distance.pairwise` of the L2-normalised embeddings and proxies (as
    pytorch-metric-learning normalises both), read as "larger is closer" (`scores`). The losses
    defined on cosine logits set `cosine_only` and take "cosine_similarity" (default) or "cosine"
    (1 - cos), read back as the cosine. They take no miner and no reference set.

    Args:
      num_classes: C, the number of training classes (labels must lie in [0, C)).
      embedding_size: d, the embeddings' size.
      proxies_per_class: K, proxies (centres, sub-centres) per class.
      lr_multiplier: factor on the proxies' learning rate, applied by `ProxyLossModel`.
      distance, reducer: the contract's (`EmbeddingLoss`); miner: must be None.
    """

    default_distance: ClassVar[str] = "cosine_similarity"
    default_reducer: ClassVar[str] = "mean"
    supports_ref: ClassVar[bool] = False
    #: Whether the loss is defined on cosines (then only `COSINE_DISTANCES` are accepted).
    cosine_only: ClassVar[bool] = True
    #: The proxies' initialiser; He normal on the [C*K, d] matrix is PyTorch's kaiming_normal_
    #: with mode="fan_out" on it, the Proxy-Anchor authors' (and pytorch-metric-learning's) choice.
    initializer: ClassVar[str] = "he_normal"

    def __init__(self, num_classes: int, embedding_size: int, proxies_per_class: int = 1,
                 lr_multiplier: float = 1.0, distance: DistanceLike | None = None,
                 reducer: ReducerLike | None = None, miner: MinerLike | None = None, **kwargs: Any) -> None:
        owner = type(self).__name__
        if miner is not None:
            raise ValueError(f"{owner} compares each embedding with the class proxies: it takes no miner, "
                             f"got {miner!r}")
        super().__init__(distance=distance, reducer=reducer, miner=None, **kwargs)
        self.num_classes = positive_int("num_classes", num_classes, owner)
        self.embedding_size = positive_int("embedding_size", embedding_size, owner)
        self.proxies_per_class = positive_int("proxies_per_class", proxies_per_class, owner)
        self.lr_multiplier = finite("lr_multiplier", lr_multiplier, 0.0, True, owner=owner)
        self.proxies = keras.Variable(
            keras.initializers.get(self.initializer)((self.num_classes * self.proxies_per_class,
                                                      self.embedding_size)),
            dtype=self.dtype, trainable=True, name="proxies")

    def check_distance(self, distance: Distance) -> None:
        super().check_distance(distance)
        if self.cosine_only and distance.name not in COSINE_DISTANCES:
            raise ValueError(f"{type(self).__name__} is defined on cosine logits: distance must be "
                             f"'cosine_similarity' or 'cosine', got {distance.name!r}")

    @property
    def variables(self) -> list[keras.Variable]:
        """[proxies]: the model tracks them as its weights (saved, restored, trained)."""
        return [self.proxies]

    @property
    def proxy_variables(self) -> list[keras.Variable]:
        """The variables trained at `lr_multiplier` times the learning rate (`ProxyLossModel`)."""
        return [self.proxies]

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        if tuples is not None:
            raise ValueError(f"{type(self).__name__} takes no tuples (from_indices): it compares embeddings "
                             "with its proxies")
        return self.proxy_terms(*self.checked(batch.labels, batch.embeddings))

    def proxy_terms(self, labels: tf.Tensor, embeddings: tf.Tensor) -> dict[str, ElementLosses]:
        """The per-element losses of labels [m] int32 and embeddings [m, d], by component."""
        raise NotImplementedError

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
        """[m, C*K] scores of every embedding against every proxy, larger = closer: the distance's
        matrix between the L2-normalised embeddings and proxies, negated for a distance (smaller
        is closer). Norms are floored (`l2_normalize`): a zero row has finite scores and gradient."""
        matrix = self.distance.pairwise(l2_normalize(embeddings), l2_normalize(tf.convert_to_tensor(self.proxies)))
        return matrix if self.distance.larger_is_closer else -matrix

    def cosines(self, embeddings: tf.Tensor) -> tf.Tensor:
        """[m, C, K] cosines of every embedding and proxy, grouped by class (a cosine-only loss's
        distance is the cosine similarity S or the cosine distance 1 - S)."""
        matrix = self.distance.pairwise(embeddings, tf.convert_to_tensor(self.proxies))
        cosine = matrix if self.distance.larger_is_closer else 1.0 - matrix
        return tf.reshape(cosine, [-1, self.num_classes, self.proxies_per_class])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "embedding_size": self.embedding_size,
                "lr_multiplier": self.lr_multiplier}


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> ElementLosses:
    """-log softmax(logits_i)[y_i] per embedding: logits [m, C], labels [m] -> [m] (reduced by the
    loss's reducer; pytorch-metric-learning's default is the mean)."""
    return ElementLosses(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
