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

import numpy as np
from numpy.typing import ArrayLike
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from pddm_tf import progress
from pddm_tf.evaluation._inputs import validate_ks, validate_labelled
from pddm_tf.evaluation.search import DEFAULT_BACKEND, nearest_neighbors

DEFAULT_KS = (1, 2, 4, 8)
# One k-means++ run, scikit-learn's own default for k-means++: restarts multiply the cost,
# which is already high with thousands of test classes.
KMEANS_N_INIT = 1
# A learned similarity of row-aligned pairs, ([p, dim], [p, dim]) -> [p], higher = more similar.
PairScores = Callable[[np.ndarray, np.ndarray], np.ndarray]


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
    embeddings, class_ids, r = validate_labelled(embeddings, labels)
    ks = validate_ks(ks)
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
    embeddings, class_ids, r = validate_labelled(embeddings, labels)
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
    embeddings, class_ids, _ = validate_labelled(embeddings, labels)
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
    embeddings, class_ids, r = validate_labelled(embeddings, labels)
    ks = validate_ks(ks)
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


def distribution_overlap(positive: np.ndarray, negative: np.ndarray, bins: int = 100) -> float:
    """Overlap coefficient of two empirical distributions: sum over bins of min(p_pos, p_neg), in [0, 1].

    0 = perfectly separated, 1 = identical. Bins span the pooled range, so the figure is invariant
    to any monotone-affine rescaling of the similarity (PDDM scores and distances are comparable).
    """
    edges = np.linspace(min(positive.min(), negative.min()), max(positive.max(), negative.max()), bins + 1)
    p = np.histogram(positive, edges)[0] / len(positive)
    n = np.histogram(negative, edges)[0] / len(negative)
    return float(np.minimum(p, n).sum())


# All pairs of a set are enumerated: beyond this many embeddings the [n, n] masks grow past ~1 GB.
MAX_PAIR_SIMILARITY_ITEMS = 20_000


def pair_similarities(
    embeddings: ArrayLike,
    labels: ArrayLike,
    pair_scores: PairScores | None = None,
    negatives_per_positive: int = 10,
    seed: int = 0,
    batch_pairs: int = 65536,
) -> dict[str, dict[str, np.ndarray]]:
    """Similarities of positive and negative pairs of a labelled set, for judging how well a
    similarity separates them (the PDDM paper's score-separation claim, METHODS.md section 2).

    Every positive pair {i, j}, i < j, is taken, and `negatives_per_positive` times as many
    negative pairs drawn uniformly without replacement (all of them when there are fewer).
    Pass each kind's arrays to `distribution_overlap` for a figure in [0, 1] (0 = separated).

    Args:
        embeddings: [n, dim], n <= `MAX_PAIR_SIMILARITY_ITEMS`.
        labels: [n] class labels.
        pair_scores: a learned similarity of row-aligned pairs, ([p, dim], [p, dim]) -> [p]
            (the PDDM pair mode); scored in batches of `batch_pairs`.
        negatives_per_positive: negative pairs drawn per positive pair.
        seed: the negative pairs' draw.
        batch_pairs: pairs per `pair_scores` call, bounding memory.

    Returns:
        {"positive": {...}, "negative": {...}}, each with "euclidean" (minus the squared distance,
        so higher = more similar for both) and, with `pair_scores`, "score"; float arrays.
    """
    # validate_labelled asks for 2 classes and a non-singleton one: both kinds of pair exist.
    embeddings, class_ids, _ = validate_labelled(embeddings, labels)
    n = len(embeddings)
    if n > MAX_PAIR_SIMILARITY_ITEMS:
        raise ValueError(f"pair_similarities enumerates every pair: {n} embeddings is over the limit of "
                         f"{MAX_PAIR_SIMILARITY_ITEMS}; pass a random subset")
    if negatives_per_positive < 1:
        raise ValueError(f"negatives_per_positive must be >= 1, got {negatives_per_positive}")
    upper = np.triu(np.ones((n, n), bool), 1)
    same = class_ids[:, None] == class_ids[None, :]
    positive = np.argwhere(upper & same)
    negative = np.argwhere(upper & ~same)
    rng = np.random.default_rng(seed)
    keep = min(len(negative), negatives_per_positive * len(positive))
    negative = negative[np.sort(rng.choice(len(negative), size=keep, replace=False))]
    out: dict[str, dict[str, np.ndarray]] = {}
    for kind, pairs in (("positive", positive), ("negative", negative)):
        a, b = embeddings[pairs[:, 0]], embeddings[pairs[:, 1]]
        out[kind] = {"euclidean": -np.sum(np.square(a - b), axis=1)}
        if pair_scores is not None:
            out[kind]["score"] = np.concatenate([
                np.asarray(pair_scores(a[s:s + batch_pairs], b[s:s + batch_pairs])).reshape(-1)
                for s in range(0, len(a), batch_pairs)])
    return out


def format_table(metrics: dict[str, float]) -> str:
    """Render {"metric": value} as an aligned two-column text table, values to 4 decimals."""
    width = max(len("metric"), *map(len, metrics))
    lines = [f"{'metric':<{width}} | value", f"{'-' * width}-+-{'-' * 6}"]
    lines += [f"{name:<{width}} | {value:.4f}" for name, value in metrics.items()]
    return "\n".join(lines)
