"""Retrieval and clustering metrics for deep metric learning (METHODS.md, section 5).

Test classes are disjoint from training classes, so a model is judged by how well its
embeddings of unseen classes retrieve and cluster:

* Recall@K: a query is a hit when any of its K nearest *other* items shares its label.
* NMI: k-means with as many clusters as classes, scored against the labels.
* MAP@R and R-Precision (Musgrave et al., "A Metric Learning Reality Check", 2020): for a
  query with R other items of its class, look at its R nearest neighbours.

Conventions shared by every function here:

* Distances are squared Euclidean, computed in float32.
* A query never retrieves itself; it is excluded by index, so exact duplicates of a query
  still count as its neighbours.
* Ties in (computed) distance go to the lower gallery index, so results are deterministic.
* Queries whose class has no other member (R = 0) can neither hit nor be ranked, so they are
  left out of Recall@K, MAP@R and R-Precision (they still take part in NMI). Counting them as
  misses instead would penalise a model for a property of the data split.
"""

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from pddm_tf import progress
from pddm_tf.few_shot import evaluate_few_shot, few_shot_accuracy  # noqa: F401  (evaluation.few_shot_accuracy)
from pddm_tf.registry import Registry

DEFAULT_KS = (1, 2, 4, 8)
# One k-means++ run, scikit-learn's own default for k-means++: restarts multiply the cost,
# which is already high with thousands of test classes.
KMEANS_N_INIT = 1
# A learned similarity of row-aligned pairs, ([p, dim], [p, dim]) -> [p], higher = more similar.
PairScores = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------
# Nearest-neighbour search
# ----------------------------------------------------------------------------------------


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
    queries = _as_matrix(queries, "queries")
    self_search = gallery is None
    gallery = queries if gallery is None else _as_matrix(gallery, "gallery embeddings")
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"queries and gallery differ in dimension: {queries.shape[1]} vs {gallery.shape[1]}"
        )
    exclude_self = exclude_self and self_search
    n_candidates = gallery.shape[0] - int(exclude_self)
    if not 1 <= k <= n_candidates:
        raise ValueError(f"k must be in [1, {n_candidates}] for this gallery, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if gallery_chunk_size is not None and gallery_chunk_size < 1:
        raise ValueError(f"gallery_chunk_size must be positive, got {gallery_chunk_size}")
    if backend == "auto":
        backend = "faiss" if _import_faiss(required=False) is not None else "numpy"
    return SEARCH_BACKENDS[backend](queries, gallery, int(k), exclude_self, int(chunk_size), gallery_chunk_size)


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
        import faiss
    except ImportError as error:
        if required:
            raise ImportError(
                'backend="faiss" needs faiss: pip install faiss-cpu (or pip install "pddm-tf[faiss]")'
            ) from error
        return None
    return faiss



def _numpy_search(
    queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool, chunk_size: int, gallery_chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact search of `nearest_neighbors(backend="numpy")` for validated float32 inputs.

    BLAS rounds the same pair differently depending on where it sits in the block (OpenBLAS's
    edge kernels sum in another order), so an sgemm score cannot decide ties: two copies of a
    gallery row would come out in an order that depends on the chunk sizes. The sgemm scores
    only screen: every query keeps its `_SPARE_WIDTH` best beyond k, and the candidates whose
    screening scores lie within twice the rounding bound of each other (a "near-tie") are
    ranked again by their float64 distance, computed pair by pair the same way wherever they
    sit, with ties to the lower index. The result is thus the k smallest float64 distances,
    ties to the lower index, whatever the chunk sizes (see `_rank_near_ties` for the bound).
    """
    n_gallery, dim = gallery.shape
    chunk_size, gallery_chunk_size = min(chunk_size, len(queries)), min(gallery_chunk_size, n_gallery)
    gallery_sq_norms = np.einsum("ij,ij->i", gallery, gallery)  # [n_gallery], no [n, dim] temporary
    # Bounds any float32 dot product of length dim + 3, in whatever order it is summed (Higham,
    # "Accuracy and Stability of Numerical Algorithms", eq. 3.5): gamma_n = n u / (1 - n u).
    gamma = (dim + 3) * 2.0**-24 / (1 - (dim + 3) * 2.0**-24)
    largest_norm = 1.001 * float(np.sqrt(gallery_sq_norms.max()))
    # One score block and one mask, reused: a fresh 16 MB array per block costs page faults.
    buffers = (np.empty(chunk_size * gallery_chunk_size, np.float32), np.empty(chunk_size * gallery_chunk_size, bool))
    # A self-search: the product block of rows i x rows j, transposed, is that of rows j x rows i, so
    # each pair of blocks is multiplied once and screened from both sides (half the sgemm).
    self_search = gallery is queries
    side = _self_search_block(chunk_size, gallery_chunk_size)
    if self_search:
        blocks = _triangle_blocks(n_gallery, side)
    else:
        blocks = -(-n_gallery // gallery_chunk_size) * -(-len(queries) // chunk_size)
    bar = progress.bar(total=blocks, desc=f"kNN of {len(queries)} queries in {n_gallery}", unit="block")

    def search(rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """k neighbours of the queries `rows`, screening `width` candidates per query."""
        indices, distances = np.empty((len(rows), k), np.int64), np.empty((len(rows), k), np.float32)
        # Fewer rows for wider screens, so that the running candidates stay within one block's size.
        step = max(1, min(chunk_size, chunk_size * max(gallery_chunk_size, first_width) // width))
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            if screened is not None and width == first_width:  # the whole first screen is done
                scores, candidates = screened[0][part], screened[1][part]
            else:
                scores, candidates = _screen(queries[part], part, gallery, gallery_sq_norms, width, exclude_self,
                                             gallery_chunk_size, buffers, bar if width == first_width else None)
            query_norms = np.sqrt(np.einsum("ij,ij->i", queries[part], queries[part]).astype(np.float64))
            # Twice the rounding bound of `_rank_near_ties`, per query.
            margin = 4.0 * gamma * (1.001 * query_norms + largest_norm) ** 2
            found, found_d, overflow = _rank_near_ties(queries, gallery, part, scores, candidates, margin, k,
                                                       complete=width >= n_gallery)
            if overflow.any():  # more near-ties at the k-th place than the screen kept: screen those wider
                found[overflow], found_d[overflow] = search(part[overflow], min(2 * width, n_gallery))
            indices[start : start + step], distances[start : start + step] = found, found_d
        return indices, distances

    first_width = min(k + _SPARE_WIDTH, n_gallery)
    screened = (_screen_self_search(queries, gallery_sq_norms, first_width, exclude_self, side, bar)
                if self_search else None)
    result = search(np.arange(len(queries)), first_width)
    bar.close()
    return result


# Candidates screened per query beyond the k returned: room for the near-ties at the k-th place.
_SPARE_WIDTH = 8


def _screen(queries: np.ndarray, rows: np.ndarray, gallery: np.ndarray, gallery_sq_norms: np.ndarray, width: int,
            exclude_self: bool, gallery_chunk_size: int, buffers: tuple[np.ndarray, np.ndarray], bar
            ) -> tuple[np.ndarray, np.ndarray]:
    """The `width` best sgemm scores 2 q.g - ||g||^2 of each query [m, dim] (query ids `rows`) and
    their gallery indices, [m, width] each, by descending score, then ascending index."""
    m = len(queries)
    best_scores = np.full((m, width), -np.inf, np.float32)
    best_indices = np.full((m, width), -1, np.int64)
    twice_queries = queries * np.float32(2.0)  # exact: an exponent shift
    for g_start in range(0, len(gallery), gallery_chunk_size):
        g_stop = min(g_start + gallery_chunk_size, len(gallery))
        shape = (m, g_stop - g_start)
        scores = buffers[0][: shape[0] * shape[1]].reshape(shape)  # contiguous, as BLAS writes it
        np.matmul(twice_queries, np.ascontiguousarray(gallery[g_start:g_stop]).T, out=scores)
        scores -= gallery_sq_norms[g_start:g_stop]
        if exclude_self:  # by index, not by zero distance, so duplicates of a query still count
            own = np.flatnonzero((rows >= g_start) & (rows < g_stop))
            scores[own, rows[own] - g_start] = -np.inf
        _merge_scores(scores, buffers[1][: shape[0] * shape[1]].reshape(shape), g_start, best_scores, best_indices)
        if bar is not None:
            bar.update(1)
    return best_scores, best_indices


def _rank_near_ties(queries: np.ndarray, gallery: np.ndarray, rows: np.ndarray, scores: np.ndarray,
                    candidates: np.ndarray, margin: np.ndarray, k: int, complete: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k nearest of each query's screened candidates by float64 distance, ties to the lower index.

    `scores` [m, w] are sgemm scores s = 2 q.g - ||g||^2 by descending value, `candidates` their
    gallery indices. Each differs from the exact 2 q.g - ||g||^2 by at most
    gamma_{dim+1} (||q|| + ||g||)^2, and the distance ||q||^2 - s derived from it by at most
    eps = 2 gamma_{dim+3} (||q|| + max ||g||)^2 (half the `margin` [m]). Candidates whose scores
    differ by more than 2 eps are therefore ordered the same by their exact distances, and a
    candidate more than 2 eps below the k-th best score cannot be among the k nearest. So the
    screened order is kept except inside near-tie groups (consecutive candidates at most 2 eps
    apart), which are ordered by float64 distance and then index. If the w-th score is within
    2 eps of the k-th, the screen may have cut a near-tie group short: such rows are flagged in
    `overflow` [m] (unless `complete`, the screen holding the whole gallery) and must be
    screened wider.

    Returns:
      (indices [m, k] int64, distances [m, k] float32, overflow [m] bool). Distances are the
      float64 ones inside near-tie groups, and max(||q||^2 - s, 0) elsewhere.
    """
    m, width = scores.shape
    margin32 = margin.astype(np.float32)[:, None]
    with np.errstate(invalid="ignore"):  # -inf - -inf: the padding after a short gallery
        apart = np.diff(scores.astype(np.float64), axis=1) < -margin[:, None]  # [m, w - 1]: a new group starts
    group = np.concatenate([np.zeros((m, 1), np.int64), np.cumsum(apart, axis=1)], axis=1)  # [m, w]
    group_start = np.concatenate([np.ones((m, 1), bool), apart], axis=1)
    start_position = np.maximum.accumulate(np.where(group_start, np.arange(width), 0), axis=1)
    # Members of a group of two or more that begins within the first k (later ones are never returned).
    multiple = np.zeros((m, width), bool)
    multiple[:, :-1] |= ~apart
    multiple[:, 1:] |= ~apart
    rescore = multiple & (start_position < k) & np.isfinite(scores)
    exact = np.zeros((m, width), np.float64)
    pair_rows, pair_slots = np.nonzero(rescore)
    for s in range(0, len(pair_rows), 4096):  # [4096, dim] float64 temporaries
        r, c = pair_rows[s : s + 4096], pair_slots[s : s + 4096]
        diff = queries[rows[r]].astype(np.float64) - gallery[candidates[r, c]]
        exact[r, c] = np.einsum("ij,ij->i", diff, diff)
    order = np.lexsort((candidates, exact, group), axis=1)[:, :k]
    indices = np.take_along_axis(candidates, order, axis=1)
    query_sq_norms = np.einsum("ij,ij->i", queries[rows], queries[rows])[:, None]
    distances = np.where(np.take_along_axis(rescore, order, axis=1), np.take_along_axis(exact, order, axis=1),
                         np.maximum(query_sq_norms - np.take_along_axis(scores, order, axis=1), 0.0))
    if complete:
        overflow = np.zeros(m, bool)
    else:
        overflow = scores[:, width - 1] >= scores[:, k - 1] - margin32[:, 0]
    return indices, distances.astype(np.float32), overflow


def _self_search_block(chunk_size: int, gallery_chunk_size: int) -> int:
    """The side of the square blocks of a self-search: two float32 [side, side] buffers (the products
    and one side's scores) hold as many entries as the [chunk_size, gallery_chunk_size] block."""
    return max(1, int(np.sqrt(chunk_size * gallery_chunk_size / 2)))


def _triangle_blocks(n: int, side: int) -> int:
    """Block pairs (i, j), j >= i, of a self-search of n points in blocks of `side` rows."""
    blocks = -(-n // side)
    return blocks * (blocks + 1) // 2


def _screen_self_search(points: np.ndarray, sq_norms: np.ndarray, width: int, exclude_self: bool, side: int,
                        bar) -> tuple[np.ndarray, np.ndarray]:
    """`_screen` of every point [n, dim] against all points, the same result in half the sgemm.

    Blocks of `side` rows are taken in pairs (i, j) with j >= i. One sgemm gives the products
    P[a, b] = 2 p_a.p_b of rows a in block i and b in block j; P - ||p_b||^2 are the scores of
    the queries in block i against gallery block j (screened row by row), and P - ||p_a||^2 those
    of the queries in block j against gallery block i (screened column by column). Every query
    thus meets the gallery blocks in ascending order, as `_merge_scores` requires: the blocks
    before its own through the column screens of earlier rows of blocks, the rest in its own row.

    Returns:
      ([n, width] scores by descending value, then ascending index; [n, width] their indices).
    """
    n = len(points)
    best_scores = np.full((n, width), -np.inf, np.float32)
    best_indices = np.full((n, width), -1, np.int64)
    products, scores = np.empty(side * side, np.float32), np.empty(side * side, np.float32)
    mask = np.empty(side * side, bool)
    for i in range(0, n, side):
        rows = slice(i, min(i + side, n))
        twice_rows = points[rows] * np.float32(2.0)  # exact: an exponent shift
        for j in range(i, n, side):
            columns = slice(j, min(j + side, n))
            shape = (rows.stop - i, columns.stop - j)
            block = products[: shape[0] * shape[1]].reshape(shape)
            np.matmul(twice_rows, points[columns].T, out=block)
            row_scores = np.subtract(block, sq_norms[columns], out=scores[: block.size].reshape(shape))
            if exclude_self and i == j:
                np.fill_diagonal(row_scores, -np.inf)
            _merge_scores(row_scores, mask[: block.size].reshape(shape), j, best_scores[rows], best_indices[rows])
            if j > i:
                column_scores = np.subtract(block, sq_norms[rows, None], out=block)
                if i == 0:
                    # The first gallery block of these queries: every one of them has more than k
                    # candidates, and cutting those to k is a partition per row, not per strided column.
                    transposed = scores[: block.size].reshape(shape[::-1])
                    np.copyto(transposed, column_scores.T)
                    _merge_scores(transposed, mask[: block.size].reshape(shape[::-1]), i, best_scores[columns],
                                  best_indices[columns])
                else:
                    _merge_score_columns(column_scores, mask[: block.size].reshape(shape), i, best_scores[columns],
                                         best_indices[columns])
            if bar is not None:
                bar.update(1)
    return best_scores, best_indices


def _merge_scores(scores: np.ndarray, mask: np.ndarray, offset: int, best_scores: np.ndarray,
                  best_indices: np.ndarray) -> None:
    """Merges a block of scores [m, c] (gallery rows offset..offset + c - 1) into the running top k
    [m, k] of its queries, in place. `mask` is a [m, c] bool buffer to use.

    A score enters a query's top k only if it beats the current k-th best strictly: equal scores
    from this block have higher indices than the entries they tie with, so they lose. Candidates
    are then merged by a stable sort of [running top k, candidates in column order], which puts
    equal scores in ascending index order.
    """
    m, c = scores.shape
    k = best_scores.shape[1]
    np.greater(scores, best_scores[:, k - 1 :], out=mask)
    flat = np.flatnonzero(mask)
    rows = flat // c
    crowded = np.flatnonzero(np.bincount(rows, minlength=m) > k)
    if len(crowded):
        # Rows with more than k candidates (every row of a chunk's first block): cut those to
        # their k best of the block, the ties at the k-th best value included, so that the merge
        # sorts at most a few entries per row. Rows with at most k are kept whole.
        crowded_scores = scores[crowded]
        kth = np.partition(crowded_scores, c - k, axis=1)[:, c - k : c - k + 1]  # k-th largest per row
        mask[crowded] = crowded_scores >= kth
        flat = np.flatnonzero(mask)
        rows = flat // c
    _merge_candidates(rows, flat - rows * c + offset, scores.ravel()[flat], best_scores, best_indices)


def _merge_score_columns(scores: np.ndarray, mask: np.ndarray, offset: int, best_scores: np.ndarray,
                         best_indices: np.ndarray) -> None:
    """`_merge_scores` of a transposed block: scores [r, m] of the gallery rows offset..offset + r - 1
    (rows) for the m queries of `best_scores` [m, k] (columns), merged in place."""
    r, m = scores.shape
    k = best_scores.shape[1]
    # A contiguous copy of the thresholds: compared along the block's rows as a strided view, they
    # make the comparison several times slower.
    np.greater(scores, np.ascontiguousarray(best_scores[:, k - 1]), out=mask)
    flat = np.flatnonzero(mask)
    queries = flat % m
    crowded = np.flatnonzero(np.bincount(queries, minlength=m) > k)
    if len(crowded):  # as in `_merge_scores`: a query's k best of the block, ties included
        crowded_scores = scores[:, crowded]
        kth = np.partition(crowded_scores.T, r - k, axis=1)[:, r - k]
        mask[:, crowded] = crowded_scores >= kth
        flat = np.flatnonzero(mask)
        queries = flat % m
    order = np.argsort(queries, kind="stable")  # by query, gallery rows still ascending within each
    flat = flat[order]
    _merge_candidates(queries[order], flat // m + offset, scores.ravel()[flat], best_scores, best_indices)


def _merge_candidates(queries: np.ndarray, indices: np.ndarray, scores: np.ndarray, best_scores: np.ndarray,
                      best_indices: np.ndarray) -> None:
    """Merges candidates (query rows [p], ascending; gallery indices [p], ascending within a query and
    above the running entries'; scores [p]) into the running top k [m, k] of the queries, in place."""
    if not len(queries):
        return
    m, k = best_scores.shape
    per_row = np.bincount(queries, minlength=m)
    touched = np.flatnonzero(per_row)  # rows with candidates, ascending
    slot = (np.cumsum(per_row > 0) - 1)[queries]  # each candidate's row among `touched`
    position = k + np.arange(len(queries)) - (np.cumsum(per_row) - per_row)[queries]  # order kept
    width = k + int(per_row.max())
    merged_scores = np.full((len(touched), width), -np.inf, np.float32)
    merged_indices = np.full((len(touched), width), -1, np.int64)
    merged_scores[:, :k], merged_indices[:, :k] = best_scores[touched], best_indices[touched]
    merged_scores[slot, position] = scores
    merged_indices[slot, position] = indices
    # Running entries hold lower indices than these candidates and are themselves in (score, index)
    # order, so a stable sort by descending score orders equal scores by ascending index.
    order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
    best_scores[touched] = np.take_along_axis(merged_scores, order, axis=1)
    best_indices[touched] = np.take_along_axis(merged_indices, order, axis=1)


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
    return _numpy_search(queries, gallery, k, exclude_self, chunk_size,
                         int(gallery_chunk_size or DEFAULT_GALLERY_CHUNK_SIZES["numpy"]))


@SEARCH_BACKENDS.register("tf")
def _tf_backend(queries, gallery, k, exclude_self, chunk_size, gallery_chunk_size):
    return _tf_search(queries, gallery, k, exclude_self, chunk_size,
                      int(gallery_chunk_size or DEFAULT_GALLERY_CHUNK_SIZES["tf"]))


@SEARCH_BACKENDS.register("faiss")
def _faiss_backend(queries, gallery, k, exclude_self, chunk_size, gallery_chunk_size):
    del chunk_size, gallery_chunk_size  # faiss blocks the search itself
    return _faiss_search(_import_faiss(required=True), queries, gallery, k, exclude_self)


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------


def recall_at_k(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
    backend: str = DEFAULT_BACKEND,
) -> dict[str, float]:
    """Recall@K over all queries that have at least one other item of their class.

    Args:
        embeddings: [n, dim] float array.
        labels: [n] class labels (any hashable dtype numpy can sort).
        ks: the K values to report.
        chunk_size: queries per distance block, see `nearest_neighbors`.
        backend: nearest-neighbour search backend, see `nearest_neighbors`.

    Returns:
        {"recall@K": fraction of queries with a same-class item among their K nearest}.

    Example (points 0, 1 | 1.4, 3 on a line: the nearest neighbours of 1 and 1.4 are each other):
        >>> recall_at_k([[0.0], [1.0], [1.4], [3.0]], [0, 0, 1, 1], ks=(1, 2))
        {'recall@1': 0.5, 'recall@2': 0.75}
    """
    embeddings, class_ids, r = _validate(embeddings, labels)
    ks = _validate_ks(ks)
    indices, _ = nearest_neighbors(embeddings, k=max(ks), chunk_size=chunk_size, backend=backend)
    return _recall_from_hits(class_ids[indices] == class_ids[:, None], r, ks)


def map_at_r(embeddings: ArrayLike, labels: ArrayLike, chunk_size: int = 1024, backend: str = DEFAULT_BACKEND
             ) -> dict[str, float]:
    """MAP@R and R-Precision (Musgrave et al., 2020).

    For a query with R > 0 other items of its class and its R nearest neighbours:
    R-Precision = (#same-class among them) / R and
    MAP@R = (1/R) * sum_{i=1..R} P(i) * rel(i), with P(i) the precision of the first i.

    Args:
        embeddings: [n, dim] float array.
        labels: [n] class labels.
        chunk_size: queries per distance block, see `nearest_neighbors`.
        backend: nearest-neighbour search backend, see `nearest_neighbors`.

    Returns:
        {"map@r": ..., "r_precision": ...}, each averaged over queries with R > 0.
    """
    embeddings, class_ids, r = _validate(embeddings, labels)
    indices, _ = nearest_neighbors(embeddings, k=int(r.max()), chunk_size=chunk_size, backend=backend)
    return _map_at_r_from_hits(class_ids[indices] == class_ids[:, None], r)


def nmi(embeddings: ArrayLike, labels: ArrayLike, seed: int = 0, n_init: int = KMEANS_N_INIT) -> float:
    """Normalized mutual information between k-means clusters and the labels.

    Args:
        embeddings: [n, dim] float array.
        labels: [n] class labels; k-means uses one cluster per distinct label.
        seed: k-means random_state, for reproducible figures.
        n_init: k-means restarts.

    Returns:
        NMI in [0, 1] (arithmetic normalisation, scikit-learn's default).
    """
    embeddings, class_ids, _ = _validate(embeddings, labels)
    return _nmi(embeddings, class_ids, seed, n_init)


def _nmi(embeddings: np.ndarray, class_ids: np.ndarray, seed: int, n_init: int) -> float:
    """NMI for validated inputs: class ids [n] are 0..n_classes-1."""
    n_clusters = int(class_ids.max()) + 1
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    with progress.step(f"NMI: k-means of {len(embeddings)} embeddings into {n_clusters} clusters"):
        clusters = kmeans.fit_predict(embeddings)
    return float(normalized_mutual_info_score(class_ids, clusters))


def evaluate_retrieval(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
    seed: int = 0,
    pair_scores: PairScores | None = None,
    rerank: int = 0,
    backend: str = DEFAULT_BACKEND,
) -> dict[str, float]:
    """Recall@K, NMI, MAP@R and R-Precision from a single nearest-neighbour search.

    With `rerank` = R > 0 and a learned `pair_scores` (e.g. the PDDM unit), the Euclidean
    top-R shortlist of every query is re-ordered by that score before the retrieval metrics
    are taken ("PDDM ranking", METHODS.md section 2); neighbours beyond R keep their order.

    Args:
        embeddings: [n, dim] float array.
        labels: [n] class labels.
        ks: the K values for Recall@K.
        chunk_size: queries per distance block, see `nearest_neighbors`.
        seed: k-means seed for NMI.
        pair_scores: similarity of row-aligned pairs, ([p, dim], [p, dim]) -> [p]; higher = closer.
        rerank: shortlist size R for re-ranking by `pair_scores` (0 = off).
        backend: nearest-neighbour search backend, see `nearest_neighbors`.

    Returns:
        {"recall@K" for K in ks, "nmi", "map@r", "r_precision"}.
    """
    embeddings, class_ids, r = _validate(embeddings, labels)
    ks = _validate_ks(ks)
    # One search deep enough for both Recall@max(ks) and the largest class's R.
    if rerank < 0 or (rerank > 0 and pair_scores is None):
        raise ValueError(f"rerank={rerank} needs rerank >= 0 and, when positive, a pair_scores function")
    # A shortlist longer than the gallery is just the whole gallery.
    k = max(max(ks), int(r.max()), min(rerank, len(embeddings) - 1))
    indices, _ = nearest_neighbors(embeddings, k=k, chunk_size=chunk_size, backend=backend)
    if rerank > 0 and pair_scores is not None:  # (pair_scores is given when rerank > 0, checked above)
        shortlist = min(rerank, k)
        reranked = rerank_shortlist(embeddings, embeddings, indices[:, :shortlist], pair_scores)
        indices = np.concatenate([reranked, indices[:, shortlist:]], axis=1)
    hits = class_ids[indices] == class_ids[:, None]  # [n, k]
    metrics = _recall_from_hits(hits, r, ks)
    metrics["nmi"] = _nmi(embeddings, class_ids, seed, KMEANS_N_INIT)
    metrics.update(_map_at_r_from_hits(hits, r))
    return metrics


def rerank_shortlist(
    queries: np.ndarray,
    gallery: np.ndarray,
    shortlist: np.ndarray,
    pair_scores: PairScores,
    batch_pairs: int = 65536,
) -> np.ndarray:
    """Re-orders each query's candidate list by a learned pair similarity, highest first.

    Args:
        queries: [n, dim]; gallery: [g, dim].
        shortlist: [n, R] gallery indices per query (e.g. its Euclidean top R).
        pair_scores: ([p, dim], [p, dim]) -> [p] similarity of aligned rows (the PDDM pair mode,
            or a SavedModel's `pddm_similarity` signature).
        batch_pairs: pairs scored per call, bounding memory.

    Returns:
        [n, R] the same candidates, sorted by descending score; ties keep their shortlist order.
    """
    n, size = shortlist.shape
    query_rows = np.repeat(np.arange(n), size)
    candidates = shortlist.reshape(-1)
    scores = np.concatenate([
        np.asarray(pair_scores(queries[query_rows[s:s + batch_pairs]], gallery[candidates[s:s + batch_pairs]]))
        for s in range(0, n * size, batch_pairs)
    ]) if n * size else np.zeros(0, np.float32)
    order = np.argsort(-scores.reshape(n, size), axis=1, kind="stable")
    return np.take_along_axis(shortlist, order, axis=1)


def _recall_from_hits(hits: np.ndarray, r: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """hits: [n, >= max(ks)] bool, neighbour j of query i shares its class; r: [n]."""
    hits = hits[r > 0]
    return {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def _map_at_r_from_hits(hits: np.ndarray, r: np.ndarray) -> dict[str, float]:
    """hits: [n, >= max(r)] bool, neighbour j of query i shares its class; r: [n]."""
    hits, r = hits[r > 0], r[r > 0]
    ranks = np.arange(1, hits.shape[1] + 1)
    relevant = hits & (ranks[None, :] <= r[:, None])  # rel(i), cut off after R neighbours
    precision_at_i = np.cumsum(relevant, axis=1) / ranks  # P(i)
    return {
        "map@r": float(np.mean(np.sum(precision_at_i * relevant, axis=1) / r)),
        "r_precision": float(np.mean(relevant.sum(axis=1) / r)),
    }


# ----------------------------------------------------------------------------------------
# Input validation and presentation
# ----------------------------------------------------------------------------------------


def _as_matrix(x: ArrayLike, name: str) -> np.ndarray:
    """Any array-like (numpy, tf.Tensor, list) -> finite [n >= 1, dim] float32 array."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf values")
    return x


def _validate(embeddings: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check a labelled embedding set.

    Returns:
        embeddings [n, dim] float32, class ids [n] int in [0, n_classes), and
        r [n] int, the number of *other* items in each query's class.
    """
    embeddings = _as_matrix(embeddings, "embeddings")
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


def _validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Recall@K cut-offs as a tuple of positive ints."""
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks}")
    return ks


def distribution_overlap(positive: np.ndarray, negative: np.ndarray, bins: int = 100) -> float:
    """Overlap coefficient of two empirical distributions: sum over bins of min(p_pos, p_neg), in [0, 1].

    0 = perfectly separated, 1 = identical. Bins span the pooled range, so the figure is invariant
    to any monotone-affine rescaling of the similarity (PDDM scores and distances are comparable).
    """
    edges = np.linspace(min(positive.min(), negative.min()), max(positive.max(), negative.max()), bins + 1)
    p = np.histogram(positive, edges)[0] / len(positive)
    n = np.histogram(negative, edges)[0] / len(negative)
    return float(np.minimum(p, n).sum())


def format_table(metrics: dict[str, float]) -> str:
    """Render {"metric": value} as an aligned two-column text table, values to 4 decimals."""
    width = max(len("metric"), *map(len, metrics))
    lines = [f"{'metric':<{width}} | value", f"{'-' * width}-+-{'-' * 6}"]
    lines += [f"{name:<{width}} | {value:.4f}" for name, value in metrics.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Keras integration
# ----------------------------------------------------------------------------------------


def embed_dataset(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Embed a finite dataset of (images, labels) batches.

    The dataset is iterated once and each batch's embeddings and labels are kept together:
    a second pass (say, one for images, one for labels) would misalign them whenever the
    dataset reshuffles on every iteration.

    Args:
        model: a model whose call returns [batch, dim] embeddings; under a strategy it runs on
            this process's default device (`pddm_tf.distributed.embed_files` shards the work over
            every replica instead).
        dataset: finite tf.data.Dataset yielding (images, labels) batches.

    Returns:
        (embeddings [n, dim], labels [n]) as numpy arrays.
    """
    embeddings, labels = [], []
    batches = int(dataset.cardinality())
    for images, batch_labels in progress.bar(dataset, total=batches if batches >= 0 else None, desc="embedding",
                                             unit="batch"):
        # A direct call, not predict_on_batch: under a strategy with R replicas that would hand the
        # whole batch to every replica and concatenate R copies of its embeddings.
        embeddings.append(np.asarray(model(images, training=False)))
        labels.append(np.asarray(batch_labels))
    if not embeddings:
        raise ValueError("dataset is empty")
    return np.concatenate(embeddings), np.concatenate(labels)


class RetrievalEvaluation(keras.callbacks.Callback):
    """Runs `evaluate_retrieval` on a held-out dataset at the end of training epochs.

    The figures are written into the epoch `logs` under `prefix` (e.g. "val_recall@1"), so
    History, the progress bar, EarlyStopping and ModelCheckpoint all see them; Keras runs
    user callbacks before its own History and progress bar.

    Args:
        dataset: finite tf.data.Dataset of (images, labels) batches; the model's
            `predict_on_batch` must map images to [batch, dim] embeddings.
        every: evaluate every `every` epochs, and always after the final epoch of `fit`.
        ks: the K values for Recall@K.
        prefix: prepended to each metric name in `logs`.
        chunk_size: queries per distance block, see `nearest_neighbors`.
        seed: k-means seed for NMI.

    Attributes:
        history: list of (epoch, metrics) for every evaluated epoch; epochs are 0-based,
            as Keras numbers them.
        last_embeddings, last_labels: the embeddings [n, d] and labels [n] of the latest evaluation.
    """

    def __init__(
        self,
        dataset: tf.data.Dataset,
        every: int = 1,
        ks: Sequence[int] = DEFAULT_KS,
        prefix: str = "val_",
        chunk_size: int = 1024,
        seed: int = 0,
    ):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be positive, got {every}")
        self.dataset = dataset
        self.every = every
        self.ks = _validate_ks(ks)
        self.prefix = prefix
        self.chunk_size = chunk_size
        self.seed = seed
        self.history: list[tuple[int, dict[str, float]]] = []
        # The latest evaluation's embeddings [n, d] and labels [n] (e.g. for pddm_tf.tensorboard's pictures).
        self.last_embeddings: np.ndarray | None = None
        self.last_labels: np.ndarray | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        is_last = epoch + 1 == (self.params or {}).get("epochs")
        if (epoch + 1) % self.every != 0 and not is_last:
            return
        embeddings, labels = embed_dataset(self.model, self.dataset)
        metrics = evaluate_retrieval(
            embeddings, labels, ks=self.ks, chunk_size=self.chunk_size, seed=self.seed
        )
        self.history.append((epoch, metrics))
        self.last_embeddings, self.last_labels = embeddings, labels
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in metrics.items()})
