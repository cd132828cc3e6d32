"""Checks of the arrays the evaluation functions take: one error that names the problem."""

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def as_matrix(x: ArrayLike, name: str) -> np.ndarray:
    """Any array-like (numpy, tf.Tensor, list) -> finite [n >= 1, dim] float32 array."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf values")
    return x


def validate_labelled(embeddings: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check a labelled embedding set.

    Returns:
        embeddings [n, dim] float32, class ids [n] int in [0, n_classes), and
        r [n] int, the number of *other* items in each query's class.
    """
    embeddings = as_matrix(embeddings, "embeddings")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D [n], got shape {labels.shape}")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings but {labels.shape[0]} labels")
    if embeddings.shape[0] < 2:
        raise ValueError("need at least 2 items to evaluate retrieval")
    _, class_ids, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    if class_sizes.size < 2:
        raise ValueError("need at least 2 classes to evaluate retrieval")
    r = class_sizes[class_ids] - 1
    if r.max() == 0:
        raise ValueError("every class is a singleton: no query has a same-class neighbour")
    return embeddings, class_ids, r


def validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Recall@K cut-offs as a tuple of positive ints."""
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks}")
    return ks
