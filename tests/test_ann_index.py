"""Approximate backends of `Index` (HNSW, IVF-PQ through faiss): recall against brute force, exact distances,
options validated, saved and loaded with the index; "auto" by size; format 1 files still load."""

import json

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from pddm_tf.evaluation import ann  # noqa: E402
from pddm_tf.evaluation.index import FORMAT_VERSION, Index  # noqa: E402


def _clustered(n, dim=32, clusters=40, seed=0):
    """Unit vectors from a mixture of Gaussians on the sphere (like class clusters of embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] / np.sqrt(dim) + 0.08 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(queries, gallery, k):
    d = ((queries[:, None, :].astype(np.float64) - gallery[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, d


@pytest.fixture(scope="module")
def data():
    faiss.omp_set_num_threads(1)
    return _clustered(3000), _clustered(100, seed=1)


@pytest.mark.parametrize("backend,options", [("hnsw", {"M": 16, "ef_construction": 40, "ef_search": 256}),
                                             ("ivf_pq", {"nlist": 32, "m": 8, "nbits": 8, "nprobe": 8,
                                                         "refine": 4})])
def test_approximate_search_recall_and_exact_distances(data, backend, options, tmp_path):
    gallery, queries = data
    index = Index(backend=backend, backend_options=options)
    labels = np.arange(len(gallery)) % 7
    index.add(gallery[:2000], labels[:2000])
    index.add(gallery[2000:], labels[2000:])  # the second add before the first search: one build
    result = index.search(queries, k=10)
    order, d = _brute_force(queries, gallery, 10)
    recall = np.mean([len(set(a) & set(b)) for a, b in zip(result.indices, order)]) / 10
    assert recall >= 0.95, recall
    # The distances are the exact ones of the rows returned, ascending, and the labels are theirs.
    np.testing.assert_allclose(result.distances, np.take_along_axis(d, result.indices, axis=1), atol=1e-5)
    assert (np.diff(result.distances, axis=1) >= 0).all()
    np.testing.assert_array_equal(result.labels, labels[result.indices])
    # Rows added after a search extend the structure: a copy of a query is then its nearest row, at distance 0.
    index.add(queries[:5], [99] * 5)
    again = index.search(queries[:5], k=1)
    np.testing.assert_array_equal(again.indices[:, 0], np.arange(len(gallery), len(gallery) + 5))
    np.testing.assert_array_equal(again.labels[:, 0], [99] * 5)
    # Saved with its structure (no rebuild on load), options and format version; loads to the same answers.
    path = index.save(tmp_path / "ann")
    with np.load(path) as saved:
        assert int(saved["format_version"]) == FORMAT_VERSION == 2
        assert json.loads(str(saved["backend_options"]))["nprobe" if backend == "ivf_pq" else "M"] == (
            options["nprobe" if backend == "ivf_pq" else "M"])
        assert saved["ann_structure"].dtype == np.uint8 and saved["ann_structure"].size > 0
    loaded = Index.load(path)
    assert loaded.backend == backend and loaded.backend_options == index.backend_options
    assert loaded._structure is not None and loaded._structure.ntotal == len(loaded) == len(gallery) + 5
    np.testing.assert_array_equal(loaded.search(queries, k=10).indices, index.search(queries, k=10).indices)
    # A backend override at load drops the structure and searches exactly.
    exact = Index.load(path, backend="numpy")
    np.testing.assert_array_equal(exact.search(queries, k=10).indices[:, :3],
                                  _brute_force(queries, exact.embeddings, 3)[0])


def test_hnsw_ef_search_trades_recall_for_work(data):
    gallery, queries = data
    recalls = []
    for ef in (1, 64):
        index = Index(backend="hnsw", backend_options={"M": 4, "ef_construction": 8, "ef_search": ef})
        index.add(gallery)
        found = index.search(queries, k=10).indices
        recalls.append(np.mean([len(set(a) & set(b)) for a, b in zip(found, _brute_force(queries, gallery, 10)[0])]))
    assert recalls[0] < recalls[1]  # ef_search is raised to k, but 64 still explores more


def test_ivf_pq_too_few_cells_probed_falls_back_to_exact_answers():
    # Two far-apart clusters, nprobe=1: a query between them may find fewer than k rows in its one cell;
    # those queries get the exact answer.
    gallery = np.concatenate([_clustered(300, dim=8, clusters=1, seed=2) + 3, _clustered(300, dim=8, clusters=1,
                                                                                       seed=3) - 3])
    index = Index(backend="ivf_pq", backend_options={"nlist": 2, "m": 2, "nbits": 4, "nprobe": 1, "refine": 1})
    index.add(gallery)
    queries = gallery[:3] * 0  # the origin: equally far from both cells
    result = index.search(queries, k=400)  # more than a cell holds
    order, d = _brute_force(queries, gallery, 400)
    assert (result.indices >= 0).all()
    np.testing.assert_allclose(result.distances, np.take_along_axis(d, order, axis=1), rtol=1e-4)


@pytest.mark.parametrize("backend,options,message", [
    ("hnsw", {"m": 4}, r"unknown hnsw option\(s\) \['m'\]; known: \['M', 'ef_construction', 'ef_search'\]"),
    ("hnsw", {"M": 1}, r"hnsw option M must be in \[2, 512\), got 1"),
    ("hnsw", {"ef_search": 2.5}, "hnsw option ef_search must be an integer, got 2.5"),
    ("hnsw", {"ef_search": True}, "must be an integer, got True"),
    ("ivf_pq", {"nbits": 17}, r"ivf_pq option nbits must be in \[1, 16\), got 17"),
    ("ivf_pq", {"nlist": 8, "nprobe": 9}, "nprobe=9 exceeds nlist=8"),
    ("numpy", {"M": 4}, "backend 'numpy' is exact and takes no backend_options"),
    ("annoy", None, r"backend must be one of \('numpy', 'tf', 'faiss', 'hnsw', 'ivf_pq', 'auto'\), got 'annoy'"),
])
def test_bad_backend_options_are_named(backend, options, message):
    with pytest.raises(ValueError, match=message):
        Index(backend=backend, backend_options=options)


def test_ivf_pq_refuses_shapes_it_cannot_train():
    index = Index(backend="ivf_pq", backend_options={"m": 5})
    with pytest.raises(ValueError, match="m=5 must divide the embedding dimension 32"):
        index.add(_clustered(10))
    small = Index(backend="ivf_pq", backend_options={"nlist": 4, "m": 8})
    small.add(_clustered(100))
    with pytest.raises(ValueError, match="needs at least 256 rows to train, the index has 100"):
        small.search(_clustered(2), k=3)


def test_auto_is_exact_below_the_threshold_and_hnsw_above(monkeypatch, data):
    gallery, queries = data
    index = Index(backend="auto")
    index.add(gallery)
    assert index.resolved_backend == "auto"  # exact (faiss flat when installed)
    np.testing.assert_array_equal(index.search(queries, k=5).indices, _brute_force(queries, gallery, 5)[0])
    monkeypatch.setattr(ann, "AUTO_APPROXIMATE_ROWS", 1000)
    assert index.resolved_backend == "hnsw"
    found = index.search(queries, k=10).indices
    assert np.mean([len(set(a) & set(b)) for a, b in zip(found, _brute_force(queries, gallery, 10)[0])]) >= 9.0
    monkeypatch.setattr(ann, "AUTO_IVF_PQ_ROWS", 2000)
    assert Index(backend="auto").resolved_backend == "auto" and index.resolved_backend == "ivf_pq"


def test_ivf_pq_default_subquantizers_divide_the_dimension():
    assert [ann.default_m(d) for d in (128, 32, 100, 7, 1)] == [32, 8, 25, 1, 1]


def test_format_1_files_still_load(tmp_path, data):
    gallery, queries = data
    path = tmp_path / "old.npz"
    np.savez(path, embeddings=gallery, labels=np.arange(len(gallery)), backend=np.array("numpy"))  # what 0.1 wrote
    loaded = Index.load(path)
    assert loaded.backend == "numpy" and loaded.backend_options == {} and len(loaded) == len(gallery)
    np.testing.assert_array_equal(loaded.search(queries, k=4).indices, _brute_force(queries, gallery, 4)[0])
    np.savez(path, embeddings=np.zeros((0, 0), np.float32), backend=np.array("numpy"))  # an empty index
    assert len(Index.load(path)) == 0
    np.savez(path, embeddings=gallery, backend=np.array("numpy"), format_version=np.array(3))
    with pytest.raises(ValueError, match="has index format 3; this pddm_tf reads formats 1 to 2"):
        Index.load(path)


def test_a_saved_structure_that_does_not_match_is_refused(tmp_path, data):
    gallery, _ = data
    index = Index(backend="hnsw", backend_options={"M": 8, "ef_construction": 16})
    index.add(gallery[:500])
    path = index.save(tmp_path / "a")
    with np.load(path) as saved:
        arrays = dict(saved)
    np.savez(tmp_path / "b.npz", **{**arrays, "embeddings": gallery[:400]})  # structure of 500 rows
    with pytest.raises(ValueError, match=r"structure \(IndexHNSWFlat, d=32, 500 rows\) does not match the index "
                                         r"\(32-dimensional, 400 rows\)"):
        Index.load(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", **{**arrays, "ann_structure": np.frombuffer(b"garbage!" * 8, np.uint8)})
    with pytest.raises(ValueError, match="the saved hnsw structure is corrupt"):
        Index.load(tmp_path / "c.npz")


def test_refine_ranks_candidates_by_exact_distance_across_query_chunks():
    rng = np.random.default_rng(4)
    gallery, queries = rng.normal(size=(50, 6)).astype(np.float32), rng.normal(size=(300, 6)).astype(np.float32)
    # More queries than one chunk; distinct rows per query, as faiss returns them, and -1 = no candidate.
    candidates = np.stack([rng.permutation(50)[:12] for _ in range(300)])
    candidates[rng.random(candidates.shape) < 0.2] = -1
    indices, distances = ann.refine(queries, gallery, candidates, k=5)
    for q in range(300):
        valid = sorted(set(candidates[q][candidates[q] >= 0]))
        d = ((gallery[valid].astype(np.float64) - queries[q]) ** 2).sum(1)
        expected = [valid[i] for i in np.argsort(d, kind="stable")[:5]]
        assert indices[q, :len(expected)].tolist() == expected
        np.testing.assert_allclose(distances[q, :len(expected)], np.sort(d)[:5], rtol=1e-5)
