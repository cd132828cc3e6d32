"""Pairwise distances and zero-safe normalisation shared by layers, mining and losses."""

from __future__ import annotations

from typing import Any, ClassVar

import tensorflow as tf

from pddm_tf._named import Named, get_named

# Squared-norm floor used wherever we divide by a norm. 1e-12 keeps float32 finite and, because the
# floor is applied to the squared norm before the square root, the gradient at an exact zero vector
# is 0 instead of NaN (d sqrt(x)/dx is infinite at 0).
EPSILON = 1e-12


def safe_norm(x: tf.Tensor, axis: int = -1, keepdims: bool = True) -> tf.Tensor:
    """Euclidean norm along `axis`, floored at sqrt(EPSILON) so that it never divides by zero."""
    return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=axis, keepdims=keepdims), EPSILON))


def l2_normalize(x: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """`x / ||x||` along `axis`; an all-zero vector maps to zero with a zero (finite) gradient.

    Example:
      >>> l2_normalize(tf.constant([[3.0, 4.0], [0.0, 0.0]])).numpy().tolist()
      [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    # A multiply by the reciprocal: one division per vector instead of one per element, in the forward
    # pass and in the gradient (which divides twice per element for a quotient).
    return x * tf.math.reciprocal(safe_norm(x, axis=axis, keepdims=True))


def pairwise_squared_distances(x: tf.Tensor, y: tf.Tensor | None = None) -> tf.Tensor:
    """Squared Euclidean distances D_ij = ||x_i - y_j||^2.

    Args:
      x: [m, d]. y: [n, d], defaults to x.
    Returns:
      [m, n], clamped at 0 (the Gram-matrix form can round slightly below zero); when `y` is None
      the diagonal is exactly 0 and the matrix is exactly symmetric.

    Example:
      >>> pairwise_squared_distances(tf.constant([[0.0, 0.0], [3.0, 4.0]])).numpy().tolist()
      [[0.0, 25.0], [25.0, 0.0]]
      >>> pairwise_squared_distances(tf.constant([[0.0, 0.0]]), tf.constant([[1.0, 0.0], [0.0, 2.0]])).numpy().tolist()
      [[1.0, 4.0]]
    """
    same = y is None
    y = x if same else y
    sq_x = tf.reduce_sum(tf.square(x), axis=1)
    sq_y = tf.reduce_sum(tf.square(y), axis=1)
    d = sq_x[:, None] - 2.0 * tf.matmul(x, y, transpose_b=True) + sq_y[None, :]
    d = tf.maximum(d, 0.0)
    if same:
        d = _zero_diagonal(0.5 * (d + tf.transpose(d)))
    return d


def squared_distances_of_pairs(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Row-wise squared distances ||x_n - y_n||^2 for [n, d] inputs -> [n]."""
    return tf.reduce_sum(tf.square(x - y), axis=-1)


def pairwise_distances(x: tf.Tensor, y: tf.Tensor | None = None) -> tf.Tensor:
    """Euclidean distances D_ij = ||x_i - y_j||, with a finite gradient everywhere.

    Args:
      x: [m, d]. y: [n, d], defaults to x.
    Returns:
      [m, n]. D_ij = sqrt(max(D_ij^2, EPSILON)): the floor keeps the gradient of the square root
      finite for (near-)coincident points, where it would otherwise be infinite. When `y` is None
      the matrix is symmetric and its diagonal is set to exactly 0 afterwards (gradient 0).
    """
    d = tf.sqrt(tf.maximum(pairwise_squared_distances(x, y), EPSILON))
    return d if y is not None else _zero_diagonal(d)


def _zero_diagonal(d: tf.Tensor) -> tf.Tensor:
    """d with its diagonal set to 0 (a [0, 0] matrix too: no `d[:, 0]` slice, which fails there)."""
    return tf.linalg.set_diag(d, tf.zeros_like(tf.linalg.diag_part(d)))


# ----------------------------------------------------------------------------- distance objects


#: Name -> `Distance` subclass; every subclass with a `name` registers itself here.
DISTANCES: dict[str, type[Distance]] = {}


class Distance(Named, table=DISTANCES, kind="distance"):
    """A distance or a similarity between embeddings, named so that a loss's config can hold it.

    `larger_is_closer` says which: False for distances (Euclidean, cosine distance: smaller = more
    alike, 0 on the diagonal), True for similarities (cosine similarity, dot product: larger = more
    alike). Losses read it to decide whether they make sense with the distance (`EmbeddingLoss.
    distance_kinds`) and to write their hinges once for both kinds (`farther`); miners, which rank
    by smaller = closer, get `to_dissimilarity` of the matrix.

    `pairwise(x, y=None)` is [m, n] with a finite gradient everywhere (coincident points included);
    with y None it is the batch against itself: symmetric, and for distances with an exact 0
    diagonal. Subclasses set `name`, `larger_is_closer` and implement `pairwise` and `paired`;
    defining one registers it in `DISTANCES`, so `get_distance(name)` and a saved loss's config find
    it. A distance with constructor arguments returns them from `get_config`.
    """

    #: True for similarities (larger = closer), False for distances (smaller = closer).
    larger_is_closer: ClassVar[bool] = False

    @property
    def is_inverted(self) -> bool:
        """pytorch-metric-learning's name for `larger_is_closer`."""
        return self.larger_is_closer

    @property
    def kind(self) -> str:
        """"similarity" (larger is closer) or "distance" (smaller is closer)."""
        return "similarity" if self.larger_is_closer else "distance"

    def pairwise(self, x: tf.Tensor, y: tf.Tensor | None = None) -> tf.Tensor:
        """Values between the rows of x [m, d] and of y [n, d] (default x) -> [m, n]."""
        raise NotImplementedError

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Row-wise values D(x_n, y_n) of [t, d] inputs -> [t], equal to `pairwise`'s entries (up to
        float rounding) off coincident rows, with a finite gradient everywhere; for losses on
        embeddings that are not rows of one batch (e.g. HDML's synthetic negatives)."""
        raise NotImplementedError

    def farther(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """How much farther apart the pair valued x is than the pair valued y: x - y for a distance,
        y - x for a similarity. A hinge max(0, margin + farther(D_ap, D_an)) is the triplet hinge
        on either kind (pytorch-metric-learning's `margin(x, y)`)."""
        return y - x if self.larger_is_closer else x - y

    def to_dissimilarity(self, values: tf.Tensor) -> tf.Tensor:
        """The values as a dissimilarity (smaller = closer), the order miners rank by: themselves
        for a distance, their negation for a similarity (subclasses may give a better one)."""
        return -values if self.larger_is_closer else values


class EuclideanDistance(Distance):
    """D_ij = ||x_i - y_j|| (`pairwise_distances`). On unit embeddings D is in [0, 2].

    Example:
      >>> get_distance("euclidean").pairwise(tf.constant([[0.0, 0.0], [3.0, 4.0]])).numpy().tolist()
      [[0.0, 5.0], [5.0, 0.0]]
    """

    name = "euclidean"

    def pairwise(self, x: tf.Tensor, y: tf.Tensor | None = None) -> tf.Tensor:
        return pairwise_distances(x, y)

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return safe_norm(x - y, keepdims=False)


class SquaredEuclideanDistance(Distance):
    """D_ij = ||x_i - y_j||^2 (`pairwise_squared_distances`). On unit embeddings D is in [0, 4].

    Example:
      >>> get_distance("squared_euclidean").pairwise(tf.constant([[0.0, 0.0], [3.0, 4.0]])).numpy().tolist()
      [[0.0, 25.0], [25.0, 0.0]]
    """

    name = "squared_euclidean"

    def pairwise(self, x: tf.Tensor, y: tf.Tensor | None = None) -> tf.Tensor:
        return pairwise_squared_distances(x, y)

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return squared_distances_of_pairs(x, y)


class CosineDistance(Distance):
    """D_ij = 1 - cos(x_i, y_j), in [0, 2]; rows are normalised first (a zero row is at distance 1
    from every other). On unit embeddings it is half the squared Euclidean distance.

    Example:
      >>> get_distance("cosine").pairwise(tf.constant([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])).numpy().tolist()
      [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
    """

    name = "cosine"

    def pairwise(self, x: tf.Tensor, y: tf.Tensor | None = None) -> tf.Tensor:
        unit = l2_normalize(x)
        other = unit if y is None else l2_normalize(y)
        d = tf.maximum(1.0 - tf.matmul(unit, other, transpose_b=True), 0.0)
        return d if y is not None else _zero_diagonal(0.5 * (d + tf.transpose(d)))

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.maximum(1.0 - tf.reduce_sum(l2_normalize(x) * l2_normalize(y), axis=-1), 0.0)


class CosineSimilarity(Distance):
    """S_ij = cos(x_i, y_j) = x_i . y_j / (||x_i|| ||y_j||), in [-1, 1], larger is closer; rows are
    normalised first (a zero row has similarity 0 with every row). The diagonal of `pairwise(x)` is
    1 up to rounding. Miners rank by the cosine distance 1 - S.

    Example:
      >>> get_distance("cosine_similarity").pairwise(tf.constant([[1.0, 0.0], [0.0, 2.0]])).numpy().tolist()
      [[1.0, 0.0], [0.0, 1.0]]
    """

    name = "cosine_similarity"
    larger_is_closer = True

    def pairwise(self, x: tf.Tensor, y: tf.Tensor | None = None) -> tf.Tensor:
        unit = l2_normalize(x)
        return tf.matmul(unit, unit if y is None else l2_normalize(y), transpose_b=True)

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(l2_normalize(x) * l2_normalize(y), axis=-1)

    def to_dissimilarity(self, values: tf.Tensor) -> tf.Tensor:
        return 1.0 - values


class DotProductSimilarity(Distance):
    """S_ij = x_i . y_j, larger is closer (unbounded; on unit embeddings, the cosine similarity).

    Example:
      >>> get_distance("dot_product").pairwise(tf.constant([[1.0, 0.0], [0.0, 2.0]])).numpy().tolist()
      [[1.0, 0.0], [0.0, 4.0]]
    """

    name = "dot_product"
    larger_is_closer = True

    def pairwise(self, x: tf.Tensor, y: tf.Tensor | None = None) -> tf.Tensor:
        return tf.matmul(x, x if y is None else y, transpose_b=True)

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(x * y, axis=-1)


def serialize_distance(distance: Distance) -> str | dict[str, Any]:
    """Its registered name, or {"name", "config"} for a distance with constructor arguments."""
    distance = get_distance(distance)
    config = distance.get_config()
    return {"name": distance.name, "config": config} if config else distance.name


def get_distance(identifier: str | dict[str, Any] | Distance) -> Distance:
    """A `Distance` from its name ("euclidean", "squared_euclidean", "cosine", "cosine_similarity",
    "dot_product" or any registered subclass's), `serialize_distance`'s dict, or itself.

    Raises:
      ValueError: an unknown name, listing the known ones, or a Distance whose class has no name.
    """
    return get_named(identifier, Distance)
