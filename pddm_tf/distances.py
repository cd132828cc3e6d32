"""Pairwise distances and zero-safe normalisation shared by layers, mining and losses."""

from __future__ import annotations

import tensorflow as tf

from pddm_tf.registry import check_registered

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
    return x / safe_norm(x, axis=axis, keepdims=True)


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
        d = 0.5 * (d + tf.transpose(d))
        d = tf.linalg.set_diag(d, tf.zeros_like(sq_x))
    return d


def squared_distances_of_pairs(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Row-wise squared distances ||x_n - y_n||^2 for [n, d] inputs -> [n]."""
    return tf.reduce_sum(tf.square(x - y), axis=-1)


def pairwise_distances(x: tf.Tensor) -> tf.Tensor:
    """Euclidean distances D_ij = ||x_i - x_j|| of one batch, with a finite gradient everywhere.

    Args:
      x: [m, d].
    Returns:
      [m, m], symmetric, diagonal exactly 0. Off the diagonal D_ij = sqrt(max(D_ij^2, EPSILON)): the
      floor keeps the gradient of the square root finite for (near-)coincident points, where it
      would otherwise be infinite; the diagonal is set to 0 afterwards, so its gradient is 0.
    """
    d = tf.sqrt(tf.maximum(pairwise_squared_distances(x), EPSILON))
    return tf.linalg.set_diag(d, tf.zeros_like(d[:, 0]))


# ----------------------------------------------------------------------------- distance objects


#: Name -> `Distance` subclass; every subclass with a `name` registers itself here.
DISTANCES: dict[str, type[Distance]] = {}


class Distance:
    """A distance between embeddings, named so that a loss's config can hold it as a string.

    Smaller means more similar; `pairwise(x)` is [m, m], symmetric, with an exact 0 diagonal and a
    finite gradient everywhere (coincident points included). Subclasses set `name` and implement
    `pairwise`; defining one registers it in `DISTANCES`, so `get_distance(name)` and a saved
    loss's config find it.
    """

    name: str = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Only a class that sets `name` itself registers: a subclass of EuclideanDistance inherits
        # "euclidean", which must keep naming EuclideanDistance.
        if "name" in cls.__dict__ and cls.name:
            if cls.name in DISTANCES and DISTANCES[cls.name] is not cls:
                raise ValueError(f"a distance named {cls.name!r} is already registered ({DISTANCES[cls.name]})")
            DISTANCES[cls.name] = cls

    def pairwise(self, x: tf.Tensor) -> tf.Tensor:
        """Distances between the rows of x [m, d] -> [m, m]."""
        raise NotImplementedError

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Row-wise distances D(x_n, y_n) of [t, d] inputs -> [t], equal to `pairwise`'s entries (up to
        float rounding) off coincident rows, with a finite gradient everywhere; for losses on
        embeddings that are not rows of one batch (e.g. HDML's synthetic negatives)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


class EuclideanDistance(Distance):
    """D_ij = ||x_i - x_j|| (`pairwise_distances`). On unit embeddings D is in [0, 2].

    Example:
      >>> get_distance("euclidean").pairwise(tf.constant([[0.0, 0.0], [3.0, 4.0]])).numpy().tolist()
      [[0.0, 5.0], [5.0, 0.0]]
    """

    name = "euclidean"

    def pairwise(self, x: tf.Tensor) -> tf.Tensor:
        return pairwise_distances(x)

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return safe_norm(x - y, keepdims=False)


class SquaredEuclideanDistance(Distance):
    """D_ij = ||x_i - x_j||^2 (`pairwise_squared_distances`). On unit embeddings D is in [0, 4].

    Example:
      >>> get_distance("squared_euclidean").pairwise(tf.constant([[0.0, 0.0], [3.0, 4.0]])).numpy().tolist()
      [[0.0, 25.0], [25.0, 0.0]]
    """

    name = "squared_euclidean"

    def pairwise(self, x: tf.Tensor) -> tf.Tensor:
        return pairwise_squared_distances(x)

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return squared_distances_of_pairs(x, y)


class CosineDistance(Distance):
    """D_ij = 1 - cos(x_i, x_j), in [0, 2]; rows are normalised first (a zero row is at distance 1
    from every other). On unit embeddings it is half the squared Euclidean distance.

    Example:
      >>> get_distance("cosine").pairwise(tf.constant([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])).numpy().tolist()
      [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
    """

    name = "cosine"

    def pairwise(self, x: tf.Tensor) -> tf.Tensor:
        unit = l2_normalize(x)
        d = tf.maximum(1.0 - tf.matmul(unit, unit, transpose_b=True), 0.0)
        d = 0.5 * (d + tf.transpose(d))
        return tf.linalg.set_diag(d, tf.zeros_like(d[:, 0]))

    def paired(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.maximum(1.0 - tf.reduce_sum(l2_normalize(x) * l2_normalize(y), axis=-1), 0.0)


def get_distance(identifier: str | Distance) -> Distance:
    """A `Distance` from its name ("euclidean", "squared_euclidean", "cosine", or any registered
    subclass's) or itself.

    Raises:
      ValueError: an unknown name, listing the known ones, or a Distance whose class has no name.
    """
    if isinstance(identifier, Distance):
        check_registered(identifier, DISTANCES)
        return identifier
    if identifier not in DISTANCES:
        raise ValueError(f"unknown distance {identifier!r}; expected one of {sorted(DISTANCES)} or a Distance")
    return DISTANCES[identifier]()
