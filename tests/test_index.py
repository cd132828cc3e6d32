"""In-memory P x K batches, the `Index`, `model.index` / `model.lookup`, and the README's TF Similarity example."""

import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import pddm_tf
from pddm_tf import data, evaluation
from pddm_tf.evaluation.index import Index

REPO = pathlib.Path(__file__).resolve().parents[1]


def _brute_force(queries, gallery, k):
    """Exact squared distances in float64 and a stable sort (ties to the lower row)."""
    d = ((queries[:, None, :].astype(np.float64) - gallery[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def test_index_search_matches_brute_force_and_survives_save_load(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(-4, 5, (n, 6)).astype(np.float32) for n in (30, 1, 19)]  # integer data: exact ties
    labels = [rng.integers(0, 5, len(p)) for p in parts]
    index = Index(gallery_chunk_size=7)  # several gallery blocks
    for p, l in zip(parts, labels):
        index.add(p, l)
    gallery, gallery_labels = np.concatenate(parts), np.concatenate(labels)
    queries = rng.integers(-4, 5, (11, 6)).astype(np.float32)
    result = index.search(queries, k=8)
    expected, distances = _brute_force(queries, gallery, 8)
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(result.distances, distances, atol=1e-4)
    np.testing.assert_array_equal(result.labels, gallery_labels[expected])
    assert len(index) == 50 and index.dim == 6

    loaded = Index.load(index.save(tmp_path / "sub" / "gallery"))
    assert (tmp_path / "sub" / "gallery.npz").exists()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["gallery.npz"]
    again = loaded.search(queries, k=8)
    np.testing.assert_array_equal(again.indices, result.indices)
    np.testing.assert_array_equal(again.labels, result.labels)
    # k beyond the index size is clamped: every row, nearest first.
    assert loaded.search(queries[:1], k=500).indices.shape == (1, 50)


def test_index_rejects_bad_input():
    index = Index()
    with pytest.raises(ValueError, match="empty"):
        index.search(np.zeros((1, 3)))
    index.add(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3-dimensional"):
        index.add(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="without labels"):
        index.add(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 3), np.nan))
    with pytest.raises(ValueError, match="backend"):
        Index(backend="annoy")


def test_saved_model_and_evaluation_share_the_search_kernel():
    # exact_top_k is the SavedModel's kernel: nearest_neighbors' chunked "tf" search over several blocks equals it
    # in one block, and so does the default "numpy" search on this data (no near-ties).
    rng = np.random.default_rng(1)
    gallery, queries = rng.normal(size=(40, 5)).astype(np.float32), rng.normal(size=(9, 5)).astype(np.float32)
    _, top = evaluation.exact_top_k(tf.constant(queries), tf.constant(gallery), 6)
    indices, _ = evaluation.nearest_neighbors(queries, gallery, k=6, gallery_chunk_size=8, chunk_size=4, backend="tf")
    np.testing.assert_array_equal(indices, top.numpy())
    default_backend, _ = evaluation.nearest_neighbors(queries, gallery, k=6, gallery_chunk_size=8, chunk_size=4)
    np.testing.assert_array_equal(default_backend, top.numpy())
    np.testing.assert_array_equal(indices, _brute_force(queries, gallery, 6)[0])


def test_arrays_sampler_gives_p_classes_of_k_rows_each_pass_without_repeats():
    labels = np.repeat(np.array([3, 10, 11, 20, 7, 5]), [4, 5, 4, 6, 4, 4])
    x = np.arange(len(labels), dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # row i holds i
    p, k = 2, 3
    batches = list(data.class_balanced_dataset_from_arrays(x, labels, p, k, seed=5).take(6))  # two passes of 3
    for pass_start in (0, 3):
        seen_classes = []
        for xb, yb in batches[pass_start:pass_start + 3]:
            rows = xb.numpy()[:, 0].astype(int)
            np.testing.assert_array_equal(labels[rows], yb.numpy())  # rows and labels stay aligned
            groups = yb.numpy().reshape(p, k)
            assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == p
            assert all(len(set(g)) == k for g in rows.reshape(p, k))  # distinct rows of a class
            seen_classes += list(groups[:, 0])
        assert sorted(seen_classes) == sorted(set(labels))  # 6 classes / P=2: each class once per pass
    # Deterministic, and a resumed iterator continues the same sequence.
    again = list(data.class_balanced_dataset_from_arrays(x, labels, p, k, seed=5).take(6))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
    start = tf.Variable(4, dtype=tf.int64)
    resumed = next(iter(data.class_balanced_dataset_from_arrays(x, labels, p, k, seed=5, start_step=start)))
    np.testing.assert_array_equal(resumed[0], batches[4][0])


def test_arrays_sampler_rejects_bad_input():
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="'9' has 1 image"):
        data.class_balanced_dataset_from_arrays(x, [1, 1, 2, 2, 9], 2, 2)
    with pytest.raises(ValueError, match="integers"):
        data.class_balanced_dataset_from_arrays(x, np.array(["a"] * 5), 2, 2)
    with pytest.raises(ValueError, match="same N"):
        data.class_balanced_dataset_from_arrays(x, [1, 2], 2, 2)


def test_model_index_and_lookup_match_brute_force_on_its_embeddings():
    keras.utils.set_random_seed(0)
    model = pddm_tf.MetricLossModel(pddm_tf.small_convnet(8, 1, width=4, depth=2), pddm_tf.ContrastiveLoss(),
                                    embedding_dim=4)
    rng = np.random.default_rng(2)
    x, y = rng.random((30, 8, 8, 1), dtype=np.float32), np.repeat(np.arange(6), 5)
    model.index(x[:20], y[:20])
    model.index(tf.data.Dataset.from_tensor_slices((x[20:], y[20:])).batch(4))  # labels from the dataset
    found = model.lookup(x[:4], k=3)
    embeddings = model.predict(x, verbose=0)
    expected, distances = _brute_force(embeddings[:4], embeddings, 3)
    assert [[n.index for n in row] for row in found] == expected.tolist()
    assert [[n.label for n in row] for row in found] == y[expected].tolist()
    assert [n.rank for n in found[0]] == [1, 2, 3]
    np.testing.assert_allclose([[n.distance for n in row] for row in found], distances, atol=1e-5)
    model.reset_index()
    with pytest.raises(ValueError, match="model.index"):
        model.lookup(x[:1])


def test_readme_tf_similarity_example_runs(tmp_path, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Coming from TF Similarity"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    # Every query is in the index: its nearest item is itself, at distance 0.
    first = namespace["neighbours"][0][0]
    assert (first.index, first.label) == (0, namespace["y"][0]) and first.distance < 1e-5
    loaded = pddm_tf.Index.load("index.npz")
    np.testing.assert_array_equal(loaded.embeddings, namespace["model"].search_index.embeddings)
    assert "(0, 0.0)" in capsys.readouterr().out
