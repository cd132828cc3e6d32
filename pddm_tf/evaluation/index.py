"""`Index`: an exact nearest-neighbour index of embeddings, with labels, that saves and loads.

The search is `pddm_tf.evaluation.nearest_neighbors` against the stored embeddings: exact squared
Euclidean distance, chunked, with numpy's BLAS matmul (the default), in TensorFlow with
`backend="tf"` (`pddm_tf.evaluation.exact_top_k`, the kernel the SavedModel's `search` signature uses), or
faiss's exact `IndexFlatL2` with `backend="faiss"` (optional, `pip install faiss-cpu`). Ties go to
the lower (earlier added) row. `EmbeddingModel.index` /
`EmbeddingModel.lookup` wrap it in the style of TF Similarity.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from pddm_tf import atomic
from pddm_tf.evaluation import search
from pddm_tf.evaluation._inputs import as_matrix


class SearchResult(NamedTuple):
    """What `Index.search` returns for n queries and k neighbours.

    Attributes:
      indices: [n, k] int64 rows of the index (in the order they were added).
      distances: [n, k] float32 squared Euclidean distances, ascending.
      labels: [n, k] the labels of those rows, or None for an index without labels.
    """

    indices: np.ndarray
    distances: np.ndarray
    labels: np.ndarray | None


class Lookup(NamedTuple):
    """One neighbour found by `EmbeddingModel.lookup` (TF Similarity's `Lookup`, in short).

    Attributes:
      rank: 1 for the nearest.
      distance: squared Euclidean distance to the query.
      label: the neighbour's label (None for an index without labels).
      index: its row in the index.
    """

    rank: int
    distance: float
    label: object
    index: int  # type: ignore[assignment]  # the field shadows tuple.index, as its documented name


def lookups(result: SearchResult) -> list[list[Lookup]]:
    """A `SearchResult` as one list of `Lookup`s per query, nearest first."""
    labels = result.labels
    return [[Lookup(rank + 1, float(result.distances[q, rank]),
                    None if labels is None else labels[q, rank].item(), int(result.indices[q, rank]))
             for rank in range(result.indices.shape[1])] for q in range(result.indices.shape[0])]


class Index:
    """Embeddings [g, d] (and optional labels [g]) searched exactly by squared Euclidean distance.

    Args:
      backend: "numpy" (default), "tf", "faiss" or "auto", see `pddm_tf.evaluation.nearest_neighbors`.
      chunk_size: queries per distance block.
      gallery_chunk_size: index rows per distance block ("numpy", "tf"); None: the backend's default.

    Example:
      index = Index(); index.add(embeddings, labels); index.search(queries, k=5).labels
    """

    def __init__(self, backend: str = search.DEFAULT_BACKEND, chunk_size: int = 1024,
                 gallery_chunk_size: int | None = None) -> None:
        search.check_backend(backend)
        self.backend = backend
        self.chunk_size = int(chunk_size)
        self.gallery_chunk_size = None if gallery_chunk_size is None else int(gallery_chunk_size)
        self._parts: list[np.ndarray] = []
        self._label_parts: list[np.ndarray] = []
        self._embeddings: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def dim(self) -> int | None:
        """d, the embedding size (None while empty)."""
        return None if not self._parts else self._parts[0].shape[1]

    @property
    def embeddings(self) -> np.ndarray:
        """[g, d] float32, every row added so far."""
        if self._embeddings is None:
            self._embeddings = (np.concatenate(self._parts) if self._parts
                                else np.zeros((0, 0), np.float32))
            self._parts = [self._embeddings] if self._parts else []
        return self._embeddings

    @property
    def labels(self) -> np.ndarray | None:
        """[g] labels, or None when rows were added without labels."""
        if not self._label_parts:
            return None
        if self._labels is None:
            self._labels = np.concatenate(self._label_parts)
            self._label_parts = [self._labels]
        return self._labels

    def add(self, embeddings: ArrayLike, labels: ArrayLike | None = None) -> None:
        """Appends embeddings [n, d] and, if the index has labels (or is empty), labels [n].

        Raises:
          ValueError: malformed or non-finite embeddings, a dimension other than the index's, labels
            of another length, labels given to an index without them (or missing for one with them).
        """
        embeddings = as_matrix(embeddings, "embeddings to index")
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ValueError(f"the index holds {self.dim}-dimensional embeddings, got {embeddings.shape[1]}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(embeddings),):
                raise ValueError(f"labels must have shape [{len(embeddings)}], got {labels.shape}")
            if labels.dtype == object:
                raise ValueError("labels must be numbers or strings (a numpy array that saves without pickle)")
        if self._size and (labels is None) != (self.labels is None):
            raise ValueError("give labels with every add, or with none" if labels is None
                             else "this index was built without labels")
        self._parts.append(embeddings)
        self._embeddings = None
        if labels is not None:
            self._label_parts.append(labels)
            self._labels = None
        self._size += len(embeddings)

    def search(self, queries: ArrayLike, k: int = 5) -> SearchResult:
        """The k nearest rows of each query [n, d] (k is clamped to the index size).

        Raises:
          ValueError: an empty index, k < 1, or malformed queries (see `nearest_neighbors`).
        """
        if not self._size:
            raise ValueError("the index is empty: add embeddings first")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        indices, distances = search.nearest_neighbors(
            queries, self.embeddings, k=min(int(k), self._size), chunk_size=self.chunk_size,
            gallery_chunk_size=self.gallery_chunk_size, backend=self.backend)
        labels = self.labels
        return SearchResult(indices, distances, None if labels is None else labels[indices])

    def save(self, path: str | os.PathLike) -> str:
        """Writes the index to `path` (a `.npz` file, no pickle), atomically; returns the path."""
        target = pathlib.Path(path)
        if target.suffix != ".npz":
            target = target.with_name(target.name + ".npz")
        target.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {"embeddings": self.embeddings, "backend": np.array(self.backend)}
        if self.labels is not None:
            arrays["labels"] = self.labels
        with atomic.replacing(target) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return str(target)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | None = None) -> Index:
        """The index `save` wrote to `path`; `backend` overrides the saved one."""
        with np.load(path, allow_pickle=False) as saved:
            index = cls(backend=backend or str(saved["backend"]))
            if saved["embeddings"].size:
                index.add(saved["embeddings"], saved["labels"] if "labels" in saved else None)
        return index
