"""Pictures of a metric-learning result: retrievals, pair distances, a map of the embedding, Recall@K.

* `retrieval_examples` + `retrieval_grid`: queries and their k nearest items as one RGB image
  (numpy only; TensorBoard shows it too), each retrieved item framed green when it shares the
  query's class and red otherwise.
* `plot_retrieval_grid`, `plot_distance_histogram` (positive vs negative pairs),
  `plot_embedding_map` (2-D t-SNE coloured by class), `plot_recall_curve`: matplotlib figures.
* `save_plots`: all four as PNG files, what `pddm-tf evaluate --plots=DIR` writes.

matplotlib is an optional dependency (`pip install "pddm-tf[plots]"`), imported only by the
plotting functions; the figures are built without pyplot, so no global backend state changes.
Distances are squared Euclidean, as in `pddm_tf.evaluation`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pddm_tf import data
from pddm_tf.evaluation.retrieval import distribution_overlap, recall_at_k
from pddm_tf.evaluation.search import nearest_neighbors

#: Frame colours (RGB in [0, 1]) of `retrieval_grid`.
HIT_COLOR = (0.0, 0.75, 0.0)
MISS_COLOR = (0.9, 0.0, 0.0)
QUERY_COLOR = (0.2, 0.4, 1.0)
_BACKGROUND = 1.0  # white


def _matplotlib_figure(**kwargs: Any):
    """A new `matplotlib.figure.Figure` (no pyplot), or a clear error when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure  # optional dependency (pddm-tf[plots])
    except ImportError as error:
        raise ImportError('pddm_tf.evaluation.visualize needs matplotlib: pip install matplotlib (or "pddm-tf[plots]")'
                          ) from error
    return Figure(**kwargs)


# ----------------------------------------------------------------------------------------- retrievals


def retrieval_examples(embeddings: ArrayLike, labels: ArrayLike, num_queries: int = 8, k: int = 5,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Picks queries and finds their k nearest other items (exact search, `evaluation.nearest_neighbors`).

    Queries are drawn at random (`seed`) among the items whose class has another member, so every
    row can have a hit. Returns (queries [q] int, neighbours [q, k] int, hits [q, k] bool) with
    q = min(num_queries, eligible items) and hits[i, j] = labels[neighbours[i, j]] == labels[queries[i]].
    """

    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    _, class_ids, counts = np.unique(labels, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(counts[class_ids] > 1)
    if not len(eligible):
        raise ValueError("no class has two items: there is nothing to retrieve")
    k = min(k, len(embeddings) - 1)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(eligible, size=min(num_queries, len(eligible)), replace=False))
    neighbours, _ = nearest_neighbors(embeddings[queries], embeddings, k=k + 1)
    # The gallery is the whole set: drop each query itself (by index, so duplicates still count).
    neighbours = np.array([[j for j in row if j != q][:k] for q, row in zip(queries, neighbours)])
    return queries, neighbours, labels[neighbours] == labels[queries][:, None]


def grid_cell_origin(row: int, column: int, image_size: int, frame: int = 2, gap: int = 2) -> tuple[int, int]:
    """Top-left pixel (y, x) of the framed cell at (row, column) of `retrieval_grid`; column 0 is the
    query, columns 1..k its neighbours, with an extra `gap` of white after the query column."""
    cell = image_size + 2 * frame
    return gap + row * (cell + gap), gap + column * (cell + gap) + (gap if column > 0 else 0)


def retrieval_grid(query_images: ArrayLike, neighbour_images: ArrayLike, hits: ArrayLike, frame: int = 2,
                   gap: int = 2) -> np.ndarray:
    """One RGB image of q queries (left column, framed blue) and their k neighbours (framed green for
    a hit, red for a miss), on white.

    Args:
      query_images: [q, s, s, c] float in [0, 1], c = 1 or 3.
      neighbour_images: [q, k, s, s, c].
      hits: [q, k] bool.
      frame: frame width in pixels; gap: white space between cells.

    Returns:
      [H, W, 3] float32 in [0, 1]; cell (i, j) starts at `grid_cell_origin(i, j, s, frame, gap)`.
    """
    queries = np.asarray(query_images, np.float32)
    neighbours = np.asarray(neighbour_images, np.float32)
    hits = np.asarray(hits, bool)
    if queries.ndim != 4 or neighbours.ndim != 5 or neighbours.shape[:2] != hits.shape or \
            neighbours.shape[0] != queries.shape[0] or neighbours.shape[2:] != queries.shape[1:]:
        raise ValueError(f"expected query images [q, s, s, c], neighbour images [q, k, s, s, c] and hits [q, k]; "
                         f"got {queries.shape}, {neighbours.shape}, {hits.shape}")
    q, k, size = hits.shape[0], hits.shape[1], queries.shape[1]
    bottom, right = grid_cell_origin(q - 1, k, size, frame, gap)
    cell = size + 2 * frame
    grid = np.full((bottom + cell + gap, right + cell + gap, 3), _BACKGROUND, np.float32)

    def place(image: np.ndarray, row: int, column: int, color: tuple[float, float, float]) -> None:
        y, x = grid_cell_origin(row, column, size, frame, gap)
        grid[y:y + cell, x:x + cell] = color
        grid[y + frame:y + frame + size, x + frame:x + frame + size] = np.clip(
            np.broadcast_to(image, (size, size, 3)), 0.0, 1.0)

    for i in range(q):
        place(queries[i], i, 0, QUERY_COLOR)
        for j in range(k):
            place(neighbours[i, j], i, j + 1, HIT_COLOR if hits[i, j] else MISS_COLOR)
    return grid


def plot_retrieval_grid(query_images: ArrayLike, neighbour_images: ArrayLike, hits: ArrayLike,
                        query_names: Sequence[str] | None = None):
    """`retrieval_grid` as a matplotlib Figure, titled, with each query's class name on the left."""
    grid = retrieval_grid(query_images, neighbour_images, hits)
    hits = np.asarray(hits, bool)
    size = np.asarray(query_images).shape[1]
    height, width = grid.shape[:2]
    scale = max(2.0, 48.0 / size)  # small images get more screen pixels
    names = list(query_names) if query_names is not None else []
    label_inches = 0.075 * max(map(len, names), default=0)
    figure = _matplotlib_figure(figsize=(width * scale / 100 + label_inches + 0.3, height * scale / 100 + 0.7),
                                dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.set_anchor("E")  # spare width goes to the left, where the class names are
    axes.imshow(grid, interpolation="nearest")
    axes.set_xticks([grid_cell_origin(0, j, size)[1] + size / 2 + 2 for j in range(hits.shape[1] + 1)],
                    ["query"] + [str(j) for j in range(1, hits.shape[1] + 1)])
    axes.xaxis.tick_top()
    axes.set_yticks([grid_cell_origin(i, 0, size)[0] + size / 2 + 2 for i in range(hits.shape[0])],
                    names or [""] * hits.shape[0], fontsize=8)
    axes.tick_params(length=0)
    for spine in axes.spines.values():
        spine.set_visible(False)
    figure.suptitle(f"nearest neighbours: green = same class, red = other class "
                    f"(precision {hits.mean():.2f})", fontsize=9)
    return figure


# ----------------------------------------------------------------------------------------- statistics


def pair_distances(embeddings: ArrayLike, labels: ArrayLike, max_pairs: int = 100_000, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances of positive (same class) and negative pairs {i, j}, i != j.

    Small sets (at most 2 * `max_pairs` pairs in all): every pair, each kind then cut to at most
    `max_pairs` at random. Larger sets: `max_pairs` of each kind drawn uniformly with replacement.
    Returns (positive [p], negative [m]) float64.
    """
    x = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    n = len(x)
    rng = np.random.default_rng(seed)
    if n * (n - 1) // 2 <= 2 * max_pairs:
        i, j = np.triu_indices(n, 1)
        same = labels[i] == labels[j]

        def cut(rows: np.ndarray) -> np.ndarray:
            return rows if len(rows) <= max_pairs else rng.choice(rows, max_pairs, replace=False)

        positive, negative = cut(np.flatnonzero(same)), cut(np.flatnonzero(~same))
        return _sq(x, i[positive], j[positive]), _sq(x, i[negative], j[negative])
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    pairs = counts * (counts - 1.0)
    if not pairs.sum():
        return np.zeros(0), _sq(x, *_distinct_class_pairs(labels, n, max_pairs, rng))
    # A class of size m holds m (m - 1) ordered pairs: drawn with that weight, then a uniform pair in it.
    cls = rng.choice(len(counts), max_pairs, p=pairs / pairs.sum())
    a = rng.integers(0, counts[cls])
    b = (a + rng.integers(1, np.maximum(counts[cls], 2))) % counts[cls]
    positive = _sq(x, order[starts[cls] + a], order[starts[cls] + b])
    return positive, _sq(x, *_distinct_class_pairs(labels, n, max_pairs, rng))


def _distinct_class_pairs(labels: np.ndarray, n: int, count: int, rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` uniform random pairs of items of different classes (by rejection)."""
    a, b = rng.integers(0, n, 4 * count), rng.integers(0, n, 4 * count)
    keep = labels[a] != labels[b]
    return a[keep][:count], b[keep][:count]


def _sq(x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return ((x[i] - x[j]) ** 2).sum(axis=1)


def plot_distance_histogram(embeddings: ArrayLike, labels: ArrayLike, max_pairs: int = 100_000, seed: int = 0,
                            bins: int = 60):
    """Histograms (densities) of positive- and negative-pair squared distances, their overlap
    coefficient (`evaluation.distribution_overlap`; 0 = separated) in the title."""

    positive, negative = pair_distances(embeddings, labels, max_pairs, seed)
    if not len(positive) or not len(negative):
        raise ValueError("need both same-class and different-class pairs")
    figure = _matplotlib_figure(figsize=(6, 3.6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    edges = np.linspace(min(positive.min(), negative.min()), max(positive.max(), negative.max()), bins + 1)
    axes.hist(negative, edges, density=True, alpha=0.6, color="tab:red",
              label=f"different class ({len(negative)} pairs)")
    axes.hist(positive, edges, density=True, alpha=0.6, color="tab:green", label=f"same class ({len(positive)} pairs)")
    axes.set_xlabel("squared Euclidean distance (lower = more similar)")
    axes.set_ylabel("density")
    axes.set_title(f"pair distances, overlap {distribution_overlap(positive, negative):.2f}", fontsize=10)
    axes.legend(fontsize=8)
    return figure


_TSNE_THREADED_FROM = 1000


def embedding_map(embeddings: ArrayLike, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA initialisation) of embeddings [n, d]: [n, 2]; perplexity is capped
    below n / 3 so that small sets work."""
    # scikit-learn (and its threadpoolctl) take seconds to import: only a t-SNE map pays for them.
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, np.float32)
    if len(x) < 4:
        raise ValueError(f"a t-SNE map needs at least 4 points, got {len(x)}")
    perplexity = min(perplexity, (len(x) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
    if len(x) > _TSNE_THREADED_FROM:
        return tsne.fit_transform(x)
    # Small maps: OpenMP's per-iteration start-up dominates, worse on a busy machine (30 points: 11 s
    # with both threads of a loaded 2-core machine, 0.5 s with one; 960 points: 34 s and 8 s).
    with threadpool_limits(1):
        return tsne.fit_transform(x)


def plot_embedding_map(embeddings: ArrayLike, labels: ArrayLike, max_points: int = 2000, seed: int = 0,
                       class_names: Sequence[str] | None = None):
    """Scatter plot of `embedding_map`, one colour per class (20 colours, repeating); at most
    `max_points` points drawn at random (`seed`). A legend when there are at most 20 classes."""
    x, labels = np.asarray(embeddings, np.float32), np.asarray(labels)
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x, labels = x[keep], labels[keep]
    points = embedding_map(x, seed)
    classes, class_ids = np.unique(labels, return_inverse=True)
    figure = _matplotlib_figure(figsize=(6, 5.4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    import matplotlib  # optional dependency (pddm-tf[plots]), present once _matplotlib_figure returned

    colors = matplotlib.colormaps["tab20"](class_ids % 20)
    axes.scatter(points[:, 0], points[:, 1], c=colors, s=10, linewidths=0)
    if len(classes) <= 20:
        for c, name in enumerate(classes):
            axes.scatter([], [], color=matplotlib.colormaps["tab20"](c % 20), s=10,
                         label=class_names[name] if class_names is not None else str(name))
        axes.legend(fontsize=6, markerscale=1.5, loc="best")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(f"t-SNE of {len(x)} embeddings, {len(classes)} classes", fontsize=10)
    return figure


def plot_recall_curve(embeddings: ArrayLike, labels: ArrayLike, max_k: int = 32):
    """Recall@K for K = 1 .. max_k (`evaluation.recall_at_k`), log-scaled K axis."""

    max_k = min(max_k, len(np.asarray(labels)) - 1)
    ks = list(range(1, max_k + 1))
    recall = recall_at_k(embeddings, labels, ks=ks)
    values = [recall[f"recall@{k}"] for k in ks]
    figure = _matplotlib_figure(figsize=(5, 3.6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(ks, values, marker="o", markersize=3)
    axes.set_xscale("log", base=2)
    ticks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= max_k]
    axes.set_xticks(ticks, [str(k) for k in ticks])
    axes.set_xlabel("K")
    axes.set_ylabel("Recall@K")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.set_title(f"Recall@K (R@1 = {values[0]:.3f})", fontsize=10)
    return figure


# ----------------------------------------------------------------------------------------- files


def save_plots(directory: str | os.PathLike, embeddings: ArrayLike, labels: ArrayLike,
               load_images: Callable[[np.ndarray], np.ndarray] | None = None,
               class_names: Sequence[str] | None = None, num_queries: int = 8, k: int = 5, seed: int = 0,
               progress: Callable[[Any], Any] | None = None) -> dict[str, str]:
    """Writes retrieval_grid.png (if `load_images`), distance_histogram.png, embedding_map.png and
    recall_curve.png into `directory` (created); returns {name: path}.

    Args:
      load_images: item indices [m] -> images [m, s, s, c] in [0, 1], for the retrieval grid.
      class_names: label -> name, for the grid's row titles and the map's legend.
      progress: wraps the list of plots (e.g. `pddm_tf.progress.bar`), for a progress bar.
    """
    root = pathlib.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)

    def grid():
        queries, neighbours, hits = retrieval_examples(embeddings, labels, num_queries, k, seed)
        images = load_images(np.concatenate([queries, neighbours.reshape(-1)]))
        names = [class_names[c] if class_names is not None else str(c) for c in labels[queries]]
        return plot_retrieval_grid(images[:len(queries)], images[len(queries):].reshape(
            neighbours.shape + images.shape[1:]), hits, names)

    plots: dict[str, Callable[[], Any]] = {}
    if load_images is not None:
        plots["retrieval_grid"] = grid
    plots["distance_histogram"] = lambda: plot_distance_histogram(embeddings, labels, seed=seed)
    plots["embedding_map"] = lambda: plot_embedding_map(embeddings, labels, seed=seed, class_names=class_names)
    plots["recall_curve"] = lambda: plot_recall_curve(embeddings, labels)
    written = {}
    for name in (progress(list(plots)) if progress else plots):
        path = root / f"{name}.png"
        plots[name]().savefig(path)
        written[name] = str(path)
    return written


def load_file_images(files: Any, image_size: int, channels: int,
                     transform: Callable[[Any, Any], Any] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """`save_plots`' `load_images` for a `pddm_tf.data.ImageFiles`: decodes only the rows asked for,
    as the evaluation pipeline does (`evaluation_dataset`)."""

    def load(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        subset = data.ImageFiles(files.paths[rows], files.labels[rows], files.class_names, files.rotations[rows])
        batches = data.evaluation_dataset(subset, image_size, channels, batch_size=max(len(rows), 1),
                                          transform=transform)
        return np.concatenate([images.numpy() for images, _ in batches])

    return load
