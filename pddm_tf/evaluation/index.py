"""`Index`: a nearest-neighbour index of embeddings, with labels, that saves and loads.

Exact backends search with `pddm_tf.evaluation.nearest_neighbors` against the stored embeddings:
squared Euclidean distance, chunked, with numpy's BLAS matmul ("numpy", the default), in TensorFlow
("tf", `pddm_tf.evaluation.exact_top_k`, the kernel the SavedModel's `search` signature uses), or
faiss's `IndexFlatL2` ("faiss", optional, `pip install faiss-cpu`); ties go to the lower (earlier
added) row. Approximate backends ("hnsw", "ivf_pq", `pddm_tf.evaluation.ann`, faiss) trade recall
for speed on large indexes; "auto" searches exactly below `ann.AUTO_APPROXIMATE_ROWS` rows, with HNSW
from there on and with IVF-PQ from `ann.AUTO_IVF_PQ_ROWS` (benchmarks/results/ann_search.md).
`EmbeddingModel.index` / `EmbeddingModel.lookup` wrap it in the style of TF Similarity.

File format (`save`/`load`): a `.npz` without pickle holding `embeddings` [g, d] float32, `labels` [g]
(optional), `backend`, and from format 2 on `format_version`, `backend_options` (JSON) and the
approximate backend's faiss structure `ann_structure` (uint8), so that loading does not rebuild it.
Files of format 1 (no `format_version`) load as before. `load` checks every declared size before
reading (`_index_file`).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from pddm_tf import atomic
from pddm_tf.evaluation import _index_file, ann, search
from pddm_tf.evaluation._inputs import as_matrix

#: The `Index` file format `save` writes; `load` reads it and every earlier one.
FORMAT_VERSION = 2
#: `Index` backends: the exact ones of `search.SEARCH_BACKENDS`, the approximate ones of `ann.ANN_BACKENDS`, "auto".
APPROXIMATE_BACKENDS = tuple(ann.ANN_BACKENDS)


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
    """Embeddings [g, d] (and optional labels [g]) searched by squared Euclidean distance.

    Args:
      backend: exact: "numpy" (default), "tf", "faiss" (see `pddm_tf.evaluation.nearest_neighbors`);
        approximate: "hnsw", "ivf_pq" (see `pddm_tf.evaluation.ann`, faiss needed); or "auto":
        exact below `ann.AUTO_APPROXIMATE_ROWS` rows (faiss's flat index when installed), "hnsw" from
        there on, "ivf_pq" from `ann.AUTO_IVF_PQ_ROWS` (exact whatever the size without faiss).
      chunk_size: queries per distance block (exact backends).
      gallery_chunk_size: index rows per distance block ("numpy", "tf"); None: the backend's default.
      backend_options: the approximate backend's options (`ann.ANN_BACKENDS` lists them and their
        defaults), e.g. {"M": 32, "ef_search": 128} for "hnsw"; exact backends take none.

    The approximate structure is built at the first search (or `save`) after rows were added, and
    extended by later `add`s (an IVF-PQ keeps the cells of its first build). A query for which it finds
    fewer than k rows (IVF-PQ probing too few cells) is answered by an exact search instead.

    Raises:
      ValueError: an unknown backend, or options it does not take (named).
      ImportError: an approximate backend without faiss installed.

    Example:
      index = Index(); index.add(embeddings, labels); index.search(queries, k=5).labels
      Index(backend="hnsw", backend_options={"ef_search": 128})
    """

    def __init__(self, backend: str = search.DEFAULT_BACKEND, chunk_size: int = 1024,
                 gallery_chunk_size: int | None = None, backend_options: Mapping[str, Any] | None = None) -> None:
        if backend not in ann.ANN_BACKENDS:
            try:
                search.check_backend(backend)
            except ValueError:
                raise ValueError(f"backend must be one of {(*search.SEARCH_BACKENDS, *APPROXIMATE_BACKENDS, 'auto')}"
                                 f", got {backend!r}") from None
        else:
            ann.import_faiss(backend)
        self.backend_options = ann.check_options(backend, backend_options)
        self.backend = backend
        self.chunk_size = int(chunk_size)
        self.gallery_chunk_size = None if gallery_chunk_size is None else int(gallery_chunk_size)
        self._parts: list[np.ndarray] = []
        self._label_parts: list[np.ndarray] = []
        self._embeddings: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._size = 0
        self._structure: Any = None  # the approximate backend's faiss index over the first _structure_rows rows
        self._structure_rows = 0

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

    @property
    def resolved_backend(self) -> str:
        """The backend a search uses now: `backend`, with "auto" resolved for the current size."""
        if self.backend != "auto":
            return self.backend
        if self._size >= ann.AUTO_APPROXIMATE_ROWS and search._import_faiss(required=False) is not None:
            return "ivf_pq" if self._size >= ann.AUTO_IVF_PQ_ROWS else "hnsw"
        return "auto"  # nearest_neighbors' exact "auto": faiss's flat index when installed, else numpy

    def add(self, embeddings: ArrayLike, labels: ArrayLike | None = None) -> None:
        """Appends embeddings [n, d] and, if the index has labels (or is empty), labels [n].

        Raises:
          ValueError: malformed or non-finite embeddings, a dimension other than the index's, labels
            of another length, labels given to an index without them (or missing for one with them).
        """
        embeddings = as_matrix(embeddings, "embeddings to index")
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ValueError(f"the index holds {self.dim}-dimensional embeddings, got {embeddings.shape[1]}")
        if self.backend in ann.ANN_BACKENDS:
            ann.check_dim(self.backend, self.backend_options, embeddings.shape[1])
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
        """The k nearest rows of each query [n, d] (k is clamped to the index size), exactly or, with
        an approximate backend, the k nearest of the rows it finds (with their exact distances).

        Raises:
          ValueError: an empty index, k < 1, or malformed queries (see `nearest_neighbors`).
        """
        if not self._size:
            raise ValueError("the index is empty: add embeddings first")
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = min(int(k), self._size)
        backend = self.resolved_backend
        if backend not in ann.ANN_BACKENDS:
            indices, distances = search.nearest_neighbors(
                queries, self.embeddings, k=k, chunk_size=self.chunk_size,
                gallery_chunk_size=self.gallery_chunk_size, backend=backend)
        else:
            queries = as_matrix(queries, "queries")
            if queries.shape[1] != self.dim:
                raise ValueError(f"queries and index differ in dimension: {queries.shape[1]} vs {self.dim}")
            options = self._options(backend)
            indices, distances = ann.search(backend, options, self._built(backend, options), self.embeddings,
                                            queries, k)
            short = (indices < 0).any(axis=1)
            if short.any():  # too few rows found: exact answers for those queries
                indices[short], distances[short] = search.nearest_neighbors(
                    queries[short], self.embeddings, k=k, chunk_size=self.chunk_size, backend="numpy")
        labels = self.labels
        return SearchResult(indices, distances, None if labels is None else labels[indices])

    def _options(self, backend: str) -> dict[str, Any]:
        """The options of approximate `backend`: this index's, or the defaults when "auto" chose it."""
        return self.backend_options if backend == self.backend else ann.check_options(backend, None)

    def _built(self, backend: str, options: Mapping[str, Any]) -> Any:
        """The approximate structure over every row: built at the first call, extended after adds."""
        if self._structure is None:
            self._structure = ann.build(backend, options, self.embeddings)
        elif self._structure_rows < self._size:
            ann.add(self._structure, self.embeddings[self._structure_rows:])
        self._structure_rows = self._size
        return self._structure

    def save(self, path: str | os.PathLike) -> str:
        """Writes the index to `path` (a `.npz` file, no pickle), atomically; returns the path. An
        approximate backend's structure is built if needed and saved with it."""
        target = pathlib.Path(path)
        if target.suffix != ".npz":
            target = target.with_name(target.name + ".npz")
        target.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {"embeddings": self.embeddings, "backend": np.array(self.backend),
                                  "format_version": np.array(FORMAT_VERSION),
                                  "backend_options": np.array(json.dumps(self.backend_options, sort_keys=True))}
        if self.labels is not None:
            arrays["labels"] = self.labels
        backend = self.resolved_backend
        if self._size and backend in ann.ANN_BACKENDS:
            arrays["ann_structure"] = ann.serialize(self._built(backend, self._options(backend)))
        with atomic.replacing(target) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return str(target)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | None = None,
             max_bytes: int = _index_file.MAX_INDEX_BYTES) -> Index:
        """The index `save` wrote to `path` (any format version up to `FORMAT_VERSION`); `backend`
        overrides the saved one (with its default options).

        Every array's declared shape and size is checked before it is read: at most `max_bytes` in
        all and at most `_index_file.MAX_INFLATION` times the file's size (see `_index_file`).

        Raises:
          FileNotFoundError: no such file.
          ValueError: not an index file (empty, truncated, random, a `.npy`), a missing or malformed
            array, complex or object data, declared sizes past the caps, a newer format version, or a
            saved structure that does not match the embeddings. One line naming the file and the problem.
        """
        arrays = _index_file.read_arrays(path, _KINDS, required=("embeddings", "backend"), max_bytes=max_bytes)
        name = os.fspath(path)
        version = int(arrays["format_version"].item()) if "format_version" in arrays else 1
        if not 1 <= version <= FORMAT_VERSION:
            raise ValueError(f"{name} has index format {version}; this pddm_tf reads formats 1 to {FORMAT_VERSION}")
        embeddings = arrays["embeddings"]
        if embeddings.ndim != 2:
            raise ValueError(f"{name}: embeddings must be 2-D [g, d], got shape {embeddings.shape}")
        labels = arrays.get("labels")
        if labels is not None and labels.shape != (len(embeddings),):
            raise ValueError(f"{name}: labels must have shape [{len(embeddings)}], got {labels.shape}")
        saved_backend = str(arrays["backend"].item()) if arrays["backend"].size == 1 else ""
        options = {}
        if "backend_options" in arrays and backend is None:
            try:
                options = json.loads(str(arrays["backend_options"].item()))
            except (ValueError, TypeError):
                raise ValueError(f"{name}: backend_options is not a JSON object") from None
            if not isinstance(options, dict):
                raise ValueError(f"{name}: backend_options is not a JSON object")
        index = cls(backend=backend or saved_backend, backend_options=options)
        if embeddings.size:
            index.add(embeddings, labels)
            structure = arrays.get("ann_structure")
            resolved = index.resolved_backend
            if structure is not None and (backend is None or backend == saved_backend) and resolved in ann.ANN_BACKENDS:
                index._structure = ann.deserialize(resolved, index._options(resolved), structure, *embeddings.shape)
                index._structure_rows = len(embeddings)
        return index


# The arrays of an index file and the dtype kinds each may have (`_index_file.read_arrays`).
_KINDS = {"embeddings": "fiu", "labels": "iufUSb", "backend": "U", "format_version": "iu", "backend_options": "U",
          "ann_structure": "u"}
