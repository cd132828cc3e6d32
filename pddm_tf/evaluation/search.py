"""Exact k-nearest-neighbour search by squared Euclidean distance, in bounded memory.

`nearest_neighbors` validates its inputs and hands them to a backend of `SEARCH_BACKENDS`: "numpy"
(BLAS sgemm screening, the default, in `_blas_search`), "tf" (the kernel the SavedModel's `search`
signature runs) or "faiss". A query never retrieves itself (excluded by index) and ties in
distance go to the lower gallery index.
"""

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from pddm_tf import progress
from pddm_tf.evaluation import _blas_search
from pddm_tf.evaluation._inputs import as_matrix
from pddm_tf.registry import Registry

#: The built-in search backends; "auto" is faiss when it is importable, numpy otherwise. Every
#: backend is an entry of `SEARCH_BACKENDS`, where a new one registers itself.
BACKENDS = ("numpy", "tf", "faiss", "auto")
DEFAULT_BACKEND = "numpy"
#: (queries [n, d] float32, gallery [g, d] float32, k, exclude_self, chunk_size, gallery_chunk_size or
#: None for the backend's default) -> (indices [n, k] int64, squared distances [n, k] float32), exact,
#: by ascending distance, for inputs that `nearest_neighbors` has validated.
SearchBackend = Callable[[np.ndarray, np.ndarray, int, bool, int, "int | None"], tuple[np.ndarray, np.ndarray]]
SEARCH_BACKENDS: Registry[SearchBackend] = Registry("search backend")
# Gallery rows per distance block when `gallery_chunk_size` is not given. "numpy": a [1,024 x 4,096]
# float32 block is 16 MB, inside the L3 cache of the 2-core test machine (32 MB), where the passes
# that select candidates from it run several times faster than from memory; the sgemm of
# [1,024 x 512] x [512 x 4,096] already runs at its full rate. "tf": 1024 x 16384 (64 MB) was
# faster than 8192, 32768 or 65536 on 200k x 512 in one loaded-machine run.
DEFAULT_GALLERY_CHUNK_SIZES = {"numpy": 4096, "tf": 16384}


def nearest_neighbors(
    queries: ArrayLike,
    gallery: ArrayLike | None = None,
    k: int = 8,
    chunk_size: int = 1024,
    exclude_self: bool = True,
    gallery_chunk_size: int | None = None,
    backend: str = DEFAULT_BACKEND,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by squared Euclidean distance, in bounded memory.

    Both exact backends of our own rank by the score 2 q.g - ||g||^2 (for a fixed query,
    ||q - g||^2 = ||q||^2 - score; see `exact_top_k`), computed block by block, `chunk_size`
    queries against `gallery_chunk_size` gallery rows at a time, and keep a running top k per
    query that every block is merged into: no [n_queries, n_gallery] matrix, nor a
    [chunk_size, n_gallery] row block, is ever built.

    Backend "numpy" (the default): each block is one `np.matmul` (a multithreaded BLAS sgemm,
    the fastest product available on a CPU without any setting; TensorFlow's default Eigen
    matmul ran at half its rate on this project's AMD EPYC, BENCHMARKS.md section 8). Selection
    costs a few passes over the block instead of a top k of it: only the scores above a query's
    current k-th best can enter its top k, and after the first block there are few of them. A
    block row with more than k such scores is first cut to its k best (one `np.partition`),
    which is how every query chunk's first block is handled. Memory beyond the inputs and the
    [n_queries, k] results (12 bytes per entry): one float32 score block and its boolean mask,
    2 x the query chunk, and the gallery's squared norms (4 bytes per gallery row, 1/dim of
    the gallery), i.e. about 5 * chunk_size * gallery_chunk_size + 4 * (chunk_size * dim +
    n_gallery) bytes: ~23 MB at the defaults (1,024 x 4,096) with dim = 512. A query chunk whose
    blocks are crowded with candidates (e.g. a gallery sorted towards the queries) can need
    transient index arrays of up to 8 bytes per block entry.
    A self-search (`gallery` None) multiplies each pair of blocks only once: the product block of
    rows j x rows i is the transpose of rows i x rows j, so one sgemm is screened from both sides
    (square blocks of sqrt(chunk_size * gallery_chunk_size / 2) rows, i.e. two score buffers in
    the same memory), which halves the sgemm; its running candidates are kept for every query at
    once, 12 * (k + 8) bytes per query, the order of the results themselves.

    Backend "tf": the same blocks in one `tf.function` (matmul, `tf.math.top_k` of each block,
    merge), the kernel the SavedModel's `search` signature runs in one block. Memory:
    O(chunk_size * gallery_chunk_size + (chunk_size + gallery_chunk_size) * dim) floats: one
    score block and its transient copy, one gallery chunk and one query chunk, about
    4 * (2 * chunk_size * gallery_chunk_size + (chunk_size + gallery_chunk_size) * dim) bytes:
    ~170 MB at its defaults (1,024 x 16,384) with dim = 512 (143 MB peak RSS increase measured on
    a 200,000 x 512 gallery, tests/test_knn_search.py). That is with TensorFlow's default Eigen
    matmul; with oneDNN (TF_ENABLE_ONEDNN_OPTS=1, the default on CPUs with AVX-512/AMX) the same
    search peaked at 486 MB, about 7.5 score blocks (124 MB with gallery_chunk_size=4096).

    With both, neighbours with equal computed distance come out in ascending gallery index
    order, so exact ties (duplicates, integer-valued data) are deterministic and independent of
    the chunk sizes; float32 rounding may still separate distances that are equal in theory, and
    the two backends' matmuls may round differently (BLAS vs Eigen/oneDNN summation order), so on
    float data they can swap neighbours whose distances differ by float32 rounding only.

    Backend "faiss": `faiss.IndexFlatL2` (exact, brute force; `pip install faiss-cpu`, or the
    `pddm-tf[faiss]` extra). It computes the same distances with a different summation order,
    so on float data its neighbours agree with ours except where two distances differ by
    float32 rounding only; among exactly tied distances (integer-valued data) faiss 1.15 was
    observed to return ascending gallery index order as well, but faiss does not document that.
    "auto" uses faiss when it is importable and "numpy" otherwise; because results may then
    depend on what is installed, "numpy" is the default.

    Args:
        queries: [n_queries, dim] float array.
        gallery: [n_gallery, dim] float array, or None to search `queries` against itself.
        k: number of neighbours per query.
        chunk_size: number of queries per distance block.
        exclude_self: when `gallery` is None, drop each query's own index from its
            neighbours (by index, so exact duplicates of a query still count). Ignored with a
            separate gallery, which has no "self" in it.
        gallery_chunk_size: number of gallery rows per distance block ("numpy", "tf"); None:
            the backend's default (`DEFAULT_GALLERY_CHUNK_SIZES`).
        backend: "numpy", "tf", "faiss" or "auto", see above.

    Returns:
        (indices, distances): [n_queries, k] int64 gallery indices and [n_queries, k]
        float32 squared distances (clamped at 0), by ascending distance.

    Raises:
        ValueError: on malformed inputs (not 2-D, empty, NaN or inf, mismatched dimensions),
            chunk sizes below 1, an unknown backend, or if `k` exceeds the number of
            candidates (n_gallery, minus one when the query itself is excluded).
        ImportError: backend="faiss" without faiss installed.
    """
    check_backend(backend)
    queries = as_matrix(queries, "queries")
    self_search = gallery is None
    gallery = queries if gallery is None else as_matrix(gallery, "gallery embeddings")
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"queries and gallery differ in dimension: {queries.shape[1]} vs {gallery.shape[1]}"
        )
    exclude_self = exclude_self and self_search
    n_candidates = gallery.shape[0] - int(exclude_self)
    check_k(k)
    if not 1 <= k <= n_candidates:
        raise ValueError(f"k must be in [1, {n_candidates}] for this gallery, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if gallery_chunk_size is not None and gallery_chunk_size < 1:
        raise ValueError(f"gallery_chunk_size must be positive, got {gallery_chunk_size}")
    if backend == "auto":
        backend = "faiss" if _import_faiss(required=False) is not None else "numpy"
    return SEARCH_BACKENDS[backend](queries, gallery, int(k), exclude_self, int(chunk_size), gallery_chunk_size)


def check_k(k: Any) -> None:
    """Raises ValueError unless `k` (neighbours per query) is an integer (a Python or numpy int, not a
    bool): 2.7 neighbours is a mistake to name, not to round."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k (neighbours per query) must be an integer, got {k!r}")


def lookup_queries(model: Any, x: Any, k: Any, batch_size: int) -> np.ndarray:
    """The query embeddings [n, d] float32 of `EmbeddingModel.lookup(x, k)`, after checking its arguments.

    Args:
      model: the embedding model.
      x: images [n, s, s, c] (numpy or tensor), or a finite dataset of image batches or of (images,
        labels, ...) batches.
      k: neighbours per query (`check_k`).
      batch_size: images per forward pass for arrays.

    Returns:
      [n, d] embeddings; [0, 0] for no image at all (an empty batch or dataset is a valid request).

    Raises:
      ValueError: a non-integer k; images that are not [n, s, s, c] numbers, or that hold NaN or inf
        (the message names the first such image), before they reach the model.
    """
    check_k(k)
    if not isinstance(x, tf.data.Dataset):
        images = _checked_images(x, 0)
        if not len(images):
            return np.zeros((0, 0), np.float32)
        return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), np.float32)
    parts, seen = [], 0
    for batch in x:  # a host loop over batches, outside any train step; checked one batch at a time
        images = _checked_images(batch[0] if isinstance(batch, (tuple, list)) else batch, seen)
        seen += len(images)
        if len(images):
            parts.append(np.asarray(model.predict_on_batch(images), np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _checked_images(x: Any, offset: int) -> np.ndarray:
    """`x` as an array of lookup query images [n, s, s, c], checked (see `lookup_queries`); image i of
    it is image offset + i of the request."""
    images = np.asarray(x)
    if images.ndim != 4 or not (np.issubdtype(images.dtype, np.number) and not np.iscomplexobj(images)):
        raise ValueError(f"lookup needs images [n, height, width, channels] of real numbers, got shape "
                         f"{images.shape} and dtype {images.dtype}")
    finite = np.isfinite(images).all(axis=(1, 2, 3))
    if not finite.all():
        raise ValueError(f"lookup: image {offset + int(np.argmin(finite))} of the request (counting from 0) "
                         "holds NaN or inf pixels")
    return images


def check_backend(backend: str) -> None:
    """Raises ValueError unless `backend` is "auto" or registered in `SEARCH_BACKENDS`."""
    if backend != "auto" and backend not in SEARCH_BACKENDS:
        raise ValueError(f"backend must be one of {(*SEARCH_BACKENDS, 'auto')}, got {backend!r}")


def exact_top_k(queries: tf.Tensor, gallery: tf.Tensor, k: int, gallery_sq_norms: tf.Tensor | None = None
                ) -> tuple[tf.Tensor, tf.Tensor]:
    """The k gallery rows nearest to each query by squared Euclidean distance: the search kernel of
    the SavedModel's `search` signature, and of `nearest_neighbors(backend="tf")` block by block.

    For a fixed query, ||q - g||^2 = ||q||^2 - (2 q.g - ||g||^2): ranking by the score
    2 q.g - ||g||^2 is ranking by distance, and costs one matmul and one subtraction. 2 q is
    exact (an exponent shift). `tf.math.top_k` is documented to put the lower index first among
    equal values: ties go to the lower gallery row. Graph-friendly (no Python loop).

    Args:
      queries: [n, d] float32; gallery: [g, d] float32.
      k: neighbours per query, 1 <= k <= g.
      gallery_sq_norms: [g], ||g||^2 of every gallery row, when already known.

    Returns:
      (scores [n, k] float32, indices [n, k] int32) by descending score (ascending distance); the
      squared distance is ||q||^2 - score (clamp it at 0: the expansion can dip below for near
      duplicates).
    """
    if gallery_sq_norms is None:
        gallery_sq_norms = tf.reduce_sum(tf.square(gallery), axis=1)  # [g]
    scores = tf.matmul(2.0 * queries, gallery, transpose_b=True) - gallery_sq_norms  # [n, g]
    return tf.math.top_k(scores, k=k, sorted=True)


def _import_faiss(required: bool):
    """The faiss module, or None when it is not installed and not `required`."""
    try:
        import faiss  # optional dependency (pddm-tf[faiss]): the exact numpy/TF kernels work without it
    except ImportError as error:
        if required:
            raise ImportError(
                'backend="faiss" needs faiss: pip install faiss-cpu (or pip install "pddm-tf[faiss]")'
            ) from error
        return None
    return faiss


def _tf_search(
    queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool, chunk_size: int, gallery_chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The chunked exact search of `nearest_neighbors` for validated float32 inputs."""
    n_queries, dim = queries.shape
    n_gallery = gallery.shape[0]
    chunk_size = min(chunk_size, n_queries)
    # Running top k of every query: best scores so far and their gallery indices. The initial
    # -inf entries lose to every real candidate, and there are at least k of those.
    best_scores = np.full((n_queries, k), -np.inf, np.float32)
    best_indices = np.full((n_queries, k), -1, np.int64)
    blocks = -(-n_gallery // gallery_chunk_size) * -(-n_queries // chunk_size)
    bar = progress.bar(total=blocks, desc=f"kNN of {n_queries} queries in {n_gallery}", unit="block")
    for g_start in range(0, n_gallery, gallery_chunk_size):
        block = tf.constant(gallery[g_start : g_start + gallery_chunk_size])  # one gallery chunk at a time
        offset = tf.constant(g_start, tf.int64)
        for start in range(0, n_queries, chunk_size):
            stop = min(start + chunk_size, n_queries)
            rows = stop - start
            chunk = queries[start:stop]
            if rows < chunk_size:  # pad the last chunk so that every call has the same shapes
                chunk = np.concatenate([chunk, np.zeros((chunk_size - rows, dim), np.float32)])
                pad = ((0, chunk_size - rows), (0, 0))
                running = (np.pad(best_scores[start:stop], pad, constant_values=-np.inf),
                           np.pad(best_indices[start:stop], pad, constant_values=-1))
            else:
                running = (best_scores[start:stop], best_indices[start:stop])
            query_ids = tf.range(start, start + chunk_size, dtype=tf.int64)
            scores, indices = _merge_block(tf.constant(chunk), block, offset, query_ids,
                                           tf.constant(running[0]), tf.constant(running[1]), k, exclude_self)
            best_scores[start:stop] = scores.numpy()[:rows]
            best_indices[start:stop] = indices.numpy()[:rows]
            bar.update(1)
        del block
    bar.close()
    # The expansion cancels catastrophically for near-identical points and can dip below 0.
    query_sq_norms = np.empty((n_queries, 1), np.float32)
    for start in range(0, n_queries, chunk_size):
        query_sq_norms[start : start + chunk_size] = tf.reduce_sum(
            tf.square(queries[start : start + chunk_size]), axis=1, keepdims=True).numpy()
    distances = np.maximum(query_sq_norms - best_scores, np.float32(0.0))
    return best_indices, distances


# One tf.function for every search (not one per call, which retraces at each call and makes TensorFlow
# warn about retracing): traced once per distinct (block shapes, k, exclude_self), at most two block
# widths per search (full blocks and the last one); queries are padded to `chunk_size` rows.
@tf.function
def _merge_block(queries, block, offset, query_ids, running_scores, running_indices, k: int, exclude_self: bool):
    """Merges one gallery block into the running top k of a query chunk (see `_tf_search`)."""
    # The k best of a block without the query itself are among its k + 1 best, so self is
    # masked in the small [m, k + 1] result rather than the [m, g] block, by index, not by
    # zero distance, so duplicates of a query still count.
    block_k = min(k + int(exclude_self), block.shape[0])
    top_scores, top_indices = exact_top_k(queries, block, block_k)  # [m, block_k]
    top_indices = tf.cast(top_indices, tf.int64) + offset
    if exclude_self:
        top_scores = tf.where(top_indices == query_ids[:, None], -np.inf, top_scores)
    # Earlier blocks hold lower gallery indices and come first in the concatenation, and
    # top_k keeps the earlier position first among equal values: ties stay in index order.
    merged_scores, positions = tf.math.top_k(tf.concat([running_scores, top_scores], axis=1), k=k, sorted=True)
    merged_indices = tf.gather(tf.concat([running_indices, top_indices], axis=1), positions, batch_dims=1)
    return merged_scores, merged_indices


def _faiss_search(faiss, queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """`nearest_neighbors` with faiss.IndexFlatL2 for validated float32 inputs."""
    index = faiss.IndexFlatL2(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery))
    k_search = k + int(exclude_self)
    distances, indices = index.search(np.ascontiguousarray(queries), k_search)
    if exclude_self:
        # Drop each query's own index. With more than k duplicates of a query at distance 0, self
        # may be missing from its k + 1 results; then the last result goes instead. A stable sort
        # that moves self to the end does both.
        is_self = indices == np.arange(len(queries))[:, None]
        order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
        indices = np.take_along_axis(indices, order, axis=1)
        distances = np.take_along_axis(distances, order, axis=1)
    return indices.astype(np.int64), np.maximum(distances, 0.0).astype(np.float32)


@SEARCH_BACKENDS.register("numpy")
def _numpy_backend(queries, gallery, k, exclude_self, chunk_size, gallery_chunk_size):
    return _blas_search.search(queries, gallery, k, exclude_self, chunk_size,
                         int(gallery_chunk_size or DEFAULT_GALLERY_CHUNK_SIZES["numpy"]))


@SEARCH_BACKENDS.register("tf")
def _tf_backend(queries, gallery, k, exclude_self, chunk_size, gallery_chunk_size):
    return _tf_search(queries, gallery, k, exclude_self, chunk_size,
                      int(gallery_chunk_size or DEFAULT_GALLERY_CHUNK_SIZES["tf"]))


@SEARCH_BACKENDS.register("faiss")
def _faiss_backend(queries, gallery, k, exclude_self, chunk_size, gallery_chunk_size):
    del chunk_size, gallery_chunk_size  # faiss blocks the search itself
    return _faiss_search(_import_faiss(required=True), queries, gallery, k, exclude_self)
