"""Approximate nearest-neighbour backends of `Index`: HNSW and IVF-PQ through faiss.

An approximate backend keeps a faiss structure next to the `Index`'s embeddings and answers a search
with the k rows it finds, ranked by exact squared Euclidean distance (the same metric as the exact
backends, `search.nearest_neighbors`), so that its only error is a missed neighbour (recall < 1),
never a wrong distance:

* "hnsw": `faiss.IndexHNSWFlat`, a graph of M links per node (Malkov & Yashunin 2018). Options:
  `M` (links per node, memory 8 * 2M bytes per row on top of the vectors it stores), `ef_construction`
  (candidates kept while inserting: build time vs graph quality), `ef_search` (candidates kept while
  searching: the recall/speed knob, raised to k when smaller). Its distances are exact.
* "ivf_pq": `faiss.IndexIVFPQ`, k-means into `nlist` cells, each vector stored as `m` codes of `nbits`
  bits (product quantisation, Jegou et al. 2011); a search scans the `nprobe` nearest cells. The
  codes give approximate distances, so the `refine` * k best candidates are re-ranked by their
  exact distance to the query, computed from the `Index`'s float embeddings (`refine` = 1: the
  PQ ranking's top k, still with exact distances). `nlist` None: 2 * sqrt(rows), set when built; `m`
  None: the largest divisor of d up to d / 4 (32 codes of 4 dimensions for d = 128).

Option names follow faiss (`M`, `efConstruction` -> `ef_construction`, ...). `check_options` refuses
unknown names and values out of range with one line naming the option. The measured trade-offs are
in benchmarks/results/ann_search.md (`benchmarks/ann_search.py`), which `AUTO_APPROXIMATE_ROWS` is read from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Approximate backend -> its options and their defaults.
ANN_BACKENDS: dict[str, dict[str, int | None]] = {
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 64},
    "ivf_pq": {"nlist": None, "m": None, "nbits": 8, "nprobe": 16, "refine": 8},
}
#: `Index(backend="auto")` searches exactly below this many rows and with "hnsw" from it on (when faiss is
#: installed). benchmarks/results/ann_search.md: at 100,000 rows HNSW at its defaults kept recall@10 = 1.000 at
#: 5x the exact search's queries/s (ef_search=32: 0.999 at 11x); on the 4,340-row Omniglot gallery faiss's exact
#: flat index was faster than HNSW at recall 1.
AUTO_APPROXIMATE_ROWS = 100_000
#: ... and with "ivf_pq" from this many rows on: at 1M rows IVF-PQ at its defaults (m = 32, nprobe = 16,
#: refine = 8) kept recall@10 = 0.990 at 24x the exact queries/s, built in 48 s; side by side, HNSW needed
#: ef_search = 128 for 0.987, at 19x, a 329 s build and twice the memory (ann_search.md, run 5).
AUTO_IVF_PQ_ROWS = 1_000_000
# Each option's lowest value, and its highest where faiss has one (nbits: IndexIVFPQ's codes hold <= 16 bits).
_BOUNDS: dict[str, tuple[int, int | None]] = {
    "M": (2, 512), "ef_construction": (1, None), "ef_search": (1, None),
    "nlist": (1, None), "m": (1, None), "nbits": (1, 16), "nprobe": (1, None), "refine": (1, None)}


def import_faiss(backend: str) -> Any:
    """The faiss module; ImportError naming `backend` and the install command when it is missing."""
    try:
        import faiss  # optional dependency: only the approximate backends and the "faiss" exact one need it
    except ImportError as error:
        raise ImportError(f'backend="{backend}" needs faiss: pip install faiss-cpu (or pip install '
                          '"pddm-tf[faiss]")') from error
    return faiss


def check_options(backend: str, options: Mapping[str, Any] | None) -> dict[str, int | None]:
    """`options` completed with the backend's defaults and checked: unknown names, non-integers and
    values out of range are a ValueError naming the option.

    Exact backends take no options: any option given to one is refused.
    """
    options = dict(options or {})
    if backend not in ANN_BACKENDS:
        if options:
            raise ValueError(f"backend {backend!r} is exact and takes no backend_options, got {sorted(options)}")
        return {}
    defaults = ANN_BACKENDS[backend]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {backend} option(s) {unknown}; known: {sorted(defaults)}")
    checked = {**defaults, **options}
    for name, value in checked.items():
        if value is None and defaults[name] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{backend} option {name} must be an integer, got {value!r}")
        low, high = _BOUNDS[name]
        if value < low or (high is not None and value > high):
            raise ValueError(f"{backend} option {name} must be in [{low}, {high if high is not None else 'inf'}), "
                             f"got {value}")
        checked[name] = int(value)
    # The default nprobe is capped at nlist when searching; a given one that cannot be honoured is refused.
    if backend == "ivf_pq" and "nprobe" in options and checked["nlist"] is not None and \
            checked["nprobe"] > checked["nlist"]:
        raise ValueError(f"ivf_pq option nprobe={checked['nprobe']} exceeds nlist={checked['nlist']}")
    return checked


def check_dim(backend: str, options: Mapping[str, Any], dim: int) -> None:
    """Raises ValueError when the (checked) options cannot index `dim`-dimensional vectors (IVF-PQ's `m`
    subquantizers must split the dimension evenly)."""
    if backend == "ivf_pq" and options["m"] is not None and dim % int(options["m"]):
        raise ValueError(f"ivf_pq option m={options['m']} must divide the embedding dimension {dim}")


def build(backend: str, options: Mapping[str, Any], embeddings: np.ndarray) -> Any:
    """A faiss structure of `backend` over embeddings [g, d] float32 (validated), trained if it needs it.

    Raises:
      ValueError: fewer rows than IVF-PQ can train on (max(nlist, 2**nbits)), or `m` not dividing d.
    """
    faiss = import_faiss(backend)
    rows, dim = embeddings.shape
    check_dim(backend, options, dim)
    if backend == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(options["M"]))
        index.hnsw.efConstruction = int(options["ef_construction"])
        index.add(np.ascontiguousarray(embeddings))
        return index
    nlist = int(options["nlist"] or resolved_nlist(rows))
    needed = max(nlist, 2 ** int(options["nbits"]))
    if rows < needed:
        raise ValueError(f"ivf_pq with nlist={nlist}, nbits={options['nbits']} needs at least {needed} rows to "
                         f"train, the index has {rows}: use an exact backend or smaller options")
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, int(options["m"] or default_m(dim)), int(options["nbits"]))
    # k-means needs ~40 points per centroid (faiss warns below 39); more only costs training time.
    sample = np.random.default_rng(0).choice(rows, size=min(rows, 40 * needed), replace=False)
    index.train(np.ascontiguousarray(embeddings[np.sort(sample)]))
    index.add(np.ascontiguousarray(embeddings))
    return index  # faiss's Python wrapper keeps `quantizer` alive with it


def default_m(dim: int) -> int:
    """IVF-PQ's default number of subquantizers for d = `dim`: the largest divisor of d up to d / 4."""
    return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)


def resolved_nlist(rows: int) -> int:
    """IVF-PQ's default number of cells for `rows` vectors: 2 * sqrt(rows), at least 1 (faiss suggests
    4-16 * sqrt(rows); fewer cells train faster, which on 2 cores dominated the build at 1M rows)."""
    return max(1, int(2 * math.sqrt(rows)))


def add(structure: Any, embeddings: np.ndarray) -> None:
    """Appends rows to a built structure (an IVF-PQ is not retrained: its cells stay those of the first build)."""
    structure.add(np.ascontiguousarray(embeddings))


def search(backend: str, options: Mapping[str, Any], structure: Any, embeddings: np.ndarray, queries: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k rows found for each query [n, d]: (indices [n, k] int64, exact squared distances [n, k]
    float32), ascending; -1 / inf where the structure found fewer than k rows (IVF with few cells probed).
    """
    faiss = import_faiss(backend)
    queries = np.ascontiguousarray(queries)
    if backend == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(int(options["ef_search"]), k)
        distances, indices = structure.search(queries, k, params=params)
        return indices.astype(np.int64), np.maximum(distances, 0.0).astype(np.float32)
    shortlist = min(structure.ntotal, k * int(options["refine"]))
    params = faiss.SearchParametersIVF()
    params.nprobe = min(int(options["nprobe"]), structure.nlist)
    _, candidates = structure.search(queries, shortlist, params=params)
    return refine(queries, embeddings, candidates.astype(np.int64), k)


def refine(queries: np.ndarray, embeddings: np.ndarray, candidates: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """The k candidates [n, c] (-1 = none) nearest to each query by exact squared distance, ascending
    (ties to the lower row), with their distances; -1 / inf fill rows with fewer than k candidates.
    Queries go `_REFINE_CHUNK` at a time: the gathered rows take 4 * chunk * c * d bytes, not n times that."""
    parts = [_refine_chunk(queries[s:s + _REFINE_CHUNK], embeddings, candidates[s:s + _REFINE_CHUNK], k)
             for s in range(0, len(queries), _REFINE_CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


_REFINE_CHUNK = 128  # queries per gather in `refine`: 128 x 80 candidates x 128 dims is 5 MB


def _refine_chunk(queries: np.ndarray, embeddings: np.ndarray, candidates: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    valid = candidates >= 0
    differences = embeddings[np.where(valid, candidates, 0)] - queries[:, None, :]  # [n, c, d]
    distances = np.einsum("ncd,ncd->nc", differences, differences)
    distances = np.where(valid, np.maximum(distances, 0.0), np.inf).astype(np.float32)
    # Sort by (distance, row): lexsort's last key is the primary one.
    order = np.lexsort((np.where(valid, candidates, np.iinfo(np.int64).max), distances), axis=1)[:, :k]
    indices = np.take_along_axis(candidates, order, axis=1)
    distances = np.take_along_axis(distances, order, axis=1)
    if indices.shape[1] < k:  # fewer candidates than k: pad
        pad = k - indices.shape[1]
        indices = np.pad(indices, ((0, 0), (0, pad)), constant_values=-1)
        distances = np.pad(distances, ((0, 0), (0, pad)), constant_values=np.inf)
    return indices, distances


def serialize(structure: Any) -> np.ndarray:
    """The structure as a uint8 array (faiss's own format), for `Index.save`."""
    faiss = import_faiss("hnsw")
    return np.asarray(faiss.serialize_index(structure), dtype=np.uint8)


def deserialize(backend: str, options: Mapping[str, Any], blob: np.ndarray, rows: int, dim: int) -> Any:
    """The structure `serialize` wrote, checked against the index it was saved with.

    Raises:
      ValueError: the bytes are not a faiss index, or one of another kind, dimension or size.
    """
    faiss = import_faiss(backend)
    try:
        structure = faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
    except RuntimeError as error:  # faiss reports a malformed file as a RuntimeError with a C++ trace
        raise ValueError(f"the saved {backend} structure is corrupt: {str(error).strip().splitlines()[0]}") from None
    expected = faiss.IndexHNSWFlat if backend == "hnsw" else faiss.IndexIVFPQ
    if not isinstance(structure, expected) or structure.d != dim or structure.ntotal != rows:
        raise ValueError(f"the saved {backend} structure ({type(structure).__name__}, d={structure.d}, "
                         f"{structure.ntotal} rows) does not match the index ({dim}-dimensional, {rows} rows)")
    return structure
