"""The "numpy" backend of `nearest_neighbors`: BLAS sgemm blocks screen candidates, a running top
k keeps them, and float64 distances order the near-ties, whatever the block sizes.
"""

import numpy as np

from pddm_tf import progress


def search(
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
    When `gallery is queries`, the first screen is `_screen_self_search`: half the sgemm.
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
