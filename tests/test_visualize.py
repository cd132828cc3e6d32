"""`pddm_tf.evaluation.visualize` pictures, progress bars and the quiet start-up filter, checked against brute force."""

import sys

import numpy as np
import pytest

from pddm_tf import evaluation, progress
from pddm_tf.cli import logs
from pddm_tf.evaluation import visualize


def _sq_distances(x):
    return ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)


def test_retrieval_grid_places_images_in_frames_of_the_right_colour():
    rng = np.random.default_rng(0)
    queries, neighbours = rng.random((2, 5, 5, 1)), rng.random((2, 3, 5, 5, 1))
    hits = np.array([[True, False, True], [False, False, True]])
    grid = visualize.retrieval_grid(queries, neighbours, hits, frame=1, gap=2)
    for row in range(2):
        for column in range(4):
            y, x = visualize.grid_cell_origin(row, column, 5, frame=1, gap=2)
            expected = visualize.QUERY_COLOR if column == 0 else (
                visualize.HIT_COLOR if hits[row, column - 1] else visualize.MISS_COLOR)
            np.testing.assert_allclose(grid[y, x], expected)  # frame corner
            np.testing.assert_allclose(grid[y + 6, x + 6], expected)  # opposite corner
            image = queries[row] if column == 0 else neighbours[row, column - 1]
            np.testing.assert_allclose(grid[y + 1:y + 6, x + 1:x + 6], np.repeat(image, 3, -1), atol=1e-6)
    assert grid.shape == (2 + 2 * 9, 2 + 4 * 9 + 2, 3) and (grid[0] == 1).all()  # white margins


def test_retrieval_examples_are_the_nearest_other_items():
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(30, 4)), np.repeat(np.arange(10), 3)
    labels[-1] = 99  # a singleton class: never a query
    queries, neighbours, hits = visualize.retrieval_examples(x, labels, num_queries=29, k=4, seed=3)
    assert 29 not in queries and len(queries) == 29
    d = _sq_distances(x)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(neighbours, np.argsort(d, axis=1, kind="stable")[queries, :4])
    np.testing.assert_array_equal(hits, labels[neighbours] == labels[queries, None])


def test_pair_distances_small_set_is_every_pair_and_large_set_samples_the_right_kind():
    rng = np.random.default_rng(2)
    x, labels = rng.normal(size=(12, 3)), np.array([0] * 5 + [1] * 4 + [2] * 3)
    positive, negative = visualize.pair_distances(x, labels, max_pairs=1000)
    d, i, j = _sq_distances(x), *np.triu_indices(12, 1)
    same = labels[i] == labels[j]
    assert len(positive) == 10 + 6 + 3 and len(negative) == 66 - 19
    np.testing.assert_allclose(np.sort(positive), np.sort(d[i, j][same]))
    np.testing.assert_allclose(np.sort(negative), np.sort(d[i, j][~same]))
    # Sampled: classes are single points (distance 0 within), 1 apart or more across.
    centres = np.arange(40, dtype=float)[:, None] * np.ones((1, 2))
    points = np.repeat(centres, 5, axis=0)
    positive, negative = visualize.pair_distances(points, np.repeat(np.arange(40), 5), max_pairs=100)
    assert len(positive) == 100 and (positive == 0).all() and len(negative) == 100 and (negative >= 2).all()


def test_plots_show_the_brute_force_figures(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(6), 5)
    x = rng.normal(size=(30, 5)) + 2 * np.eye(6, 5)[labels]
    images = rng.random((30, 6, 6, 3))
    written = visualize.save_plots(tmp_path, x, labels, lambda rows: images[rows], [f"c{i}" for i in range(6)],
                                   num_queries=4, k=3)
    assert sorted(written) == ["distance_histogram", "embedding_map", "recall_curve", "retrieval_grid"]
    for path in written.values():
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # Recall@K curve: brute force for every K.
    curve = visualize.plot_recall_curve(x, labels, max_k=8).axes[0].lines[0].get_ydata()
    d = _sq_distances(x)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1, kind="stable")
    expected = [np.mean((labels[nearest[:, :k]] == labels[:, None]).any(axis=1)) for k in range(1, 9)]
    np.testing.assert_allclose(curve, expected)
    # Histogram title: the overlap of the brute-force pair distances.
    i, j = np.triu_indices(30, 1)
    overlap = evaluation.distribution_overlap(d[i, j][labels[i] == labels[j]], d[i, j][labels[i] != labels[j]])
    assert f"overlap {overlap:.2f}" in visualize.plot_distance_histogram(x, labels).axes[0].get_title()
    # Map: one point per item, coloured by class (items of a class share a colour).
    collection = visualize.plot_embedding_map(x, labels).axes[0].collections[0]
    colours = collection.get_facecolors()
    assert len(collection.get_offsets()) == 30
    assert all(len({tuple(c) for c in colours[labels == c]}) == 1 for c in range(6))
    assert len({tuple(c) for c in colours}) == 6


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pddm-tf\[plots\]"):
        visualize.plot_recall_curve(np.eye(4), [0, 0, 1, 1])


def test_progress_bars_follow_the_switch(capfd, monkeypatch):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    x = np.random.default_rng(4).normal(size=(50, 3)).astype(np.float32)
    progress.set_enabled(True)
    try:
        evaluation.nearest_neighbors(x, k=2, chunk_size=10)
        assert "kNN of 50 queries in 50" in capfd.readouterr().err
        progress.set_enabled(False)
        evaluation.nearest_neighbors(x, k=2, chunk_size=10)
        assert capfd.readouterr().err == ""
    finally:
        progress.set_enabled(None)
    assert not progress.enabled()  # pytest's stderr is not a terminal


# What `import tensorflow` printed on this project's CPU-only machine (TF 2.21), and a Python warning.
_STARTUP = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795917562.898370    4194 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1795917563.006753    4194 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
W0000 00:00:1795917563.100000    4194 some_op.cc:12] a warning
E0000 00:00:1795917569.275035    4194 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1795917569.300000    4194 other.cc:7] a real error
/x.py:3: UserWarning: careful
"""


def test_startup_filter_applies_the_log_level_to_the_early_lines():
    lines = _STARTUP.splitlines(keepends=True)
    assert logs.filter_lines(_STARTUP, 2, has_gpu_device=False) == lines[6] + lines[7]
    assert logs.filter_lines(_STARTUP, 2, has_gpu_device=True) == "".join(lines[5:8])
    assert logs.filter_lines(_STARTUP, 1, has_gpu_device=False) == lines[4] + lines[6] + lines[7]
    assert logs.filter_lines(_STARTUP, 0, has_gpu_device=False) == _STARTUP


def test_cpp_log_level_respects_the_user(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert (logs.cpp_log_level(0), logs.cpp_log_level(1)) == (2, 0)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    assert (logs.cpp_log_level(0), logs.cpp_log_level(1)) == (1, 1)
