"""Large-scale exact nearest-neighbour search (`evaluation.nearest_neighbors`): chunking, ties, memory, faiss.

Every check compares with an independent reference: a numpy brute force in float64 with a stable
argsort (distance first, then gallery index), or faiss.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pddm_tf.evaluation import nearest_neighbors


def brute_force(queries, gallery, k, exclude_self):
    """[n, k] indices by (float64 squared distance, gallery index) and their distances.

    The distances are sums of squared differences, not ||q||^2 - 2 q.g + ||g||^2: a matrix product
    (float64 BLAS too) rounds a row differently by where it sits in the block, so exact copies
    would not tie in the reference either.
    """
    q = np.asarray(queries, np.float64)
    g = np.asarray(gallery, np.float64)
    d = np.concatenate([np.square(q[s:s + 64, None, :] - g[None]).sum(axis=2) for s in range(0, len(q), 64)])
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    indices = np.argsort(d, axis=1, kind="stable")[:, :k]
    return indices, np.take_along_axis(d, indices, axis=1)


@pytest.fixture(scope="module")
def float_data():
    """Normal data rounded to multiples of 1/16 ([3000, 32] gallery, [700, 32] queries).

    Products are multiples of 2^-8 below 2^5 and every sum stays below 2^12, so float32 computes
    every distance exactly, in any summation order: the neighbours must then equal the float64
    brute force exactly, not just up to rounding. (Unrounded data: see the next test.)
    """
    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(3000, 32)), rng.normal(size=(700, 32))
    return (np.round(np.clip(x, -3.9, 3.9) * 16) / 16).astype(np.float32), (
        np.round(np.clip(q, -3.9, 3.9) * 16) / 16).astype(np.float32)


def test_unrounded_float_data_matches_brute_force_up_to_rounding():
    # float32 rounding may swap neighbours whose float64 distances differ by ~1e-6: allow that
    # (at the same rank the returned neighbour must be as near as the reference one), nothing else.
    x = np.random.default_rng(5).normal(size=(3000, 32)).astype(np.float32)
    indices, distances = nearest_neighbors(x, k=10, chunk_size=700, gallery_chunk_size=1000)
    expected, expected_d = brute_force(x, x, 10, exclude_self=True)
    returned_d = np.sum((x[:, None, :].astype(np.float64) - x[indices]) ** 2, axis=2)  # float64, [n, k]
    np.testing.assert_allclose(returned_d, expected_d, rtol=1e-5)
    assert np.mean(np.any(indices != expected, axis=1)) < 0.01
    assert not np.any(indices == np.arange(3000)[:, None])
    np.testing.assert_allclose(distances, expected_d, rtol=1e-5, atol=1e-4)


# (n, chunk_size, gallery_chunk_size): one block; sizes that do not divide n; a gallery chunk
# smaller than k (k = 10) and a gallery chunk of 1; a query chunk of 1. Tiny chunks on fewer
# points, to keep the number of calls down.
CHUNKS = [(3000, 4096, 65536), (3000, 1024, 16384), (3000, 333, 1000), (1000, 700, 7), (200, 64, 1),
          (300, 1, 1234), (60, 1, 9)]


@pytest.mark.parametrize("n, chunk_size, gallery_chunk_size", CHUNKS)
def test_self_search_matches_brute_force(float_data, n, chunk_size, gallery_chunk_size):
    x = float_data[0][:n]
    indices, distances = nearest_neighbors(x, k=10, chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size)
    expected, expected_d = brute_force(x, x, 10, exclude_self=True)
    assert indices.dtype == np.int64 and distances.dtype == np.float32
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, expected_d, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("chunk_size, gallery_chunk_size", [(4096, 65536), (256, 999), (350, 9)])
def test_separate_gallery_matches_brute_force(float_data, chunk_size, gallery_chunk_size):
    gallery, queries = float_data
    gallery = gallery.copy()
    gallery[2500] = queries[3]  # an exact copy of a query: distance 0, not excluded
    indices, distances = nearest_neighbors(queries, gallery, k=10, chunk_size=chunk_size,
                                           gallery_chunk_size=gallery_chunk_size)
    expected, expected_d = brute_force(queries, gallery, 10, exclude_self=False)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, expected_d, rtol=1e-5, atol=1e-4)
    assert indices[3, 0] == 2500


def _integer_data(n=2000, dim=4, seed=1):
    """Values in {0, 1, 2}: 81 distinct points, ~25 copies each; every distance is a small integer,
    exact in float32, so nearly every neighbour is tied and only the index rule orders them."""
    return np.random.default_rng(seed).integers(0, 3, size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("chunk_size, gallery_chunk_size", [(4096, 65536), (1024, 16384), (300, 77), (999, 41)])
def test_exact_ties_come_in_ascending_index_order(chunk_size, gallery_chunk_size):
    x = _integer_data()
    k = 60  # deeper than any duplicate group: crosses from distance 0 to distance 1
    indices, distances = nearest_neighbors(x, k=k, chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size)
    expected, expected_d = brute_force(x, x, k, exclude_self=True)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(distances, expected_d.astype(np.float32))

    # exclude_self drops only the query's own index: its duplicates stay, at distance 0.
    assert not np.any(indices == np.arange(len(x))[:, None])
    duplicates = (x[indices] == x[:, None, :]).all(axis=2)  # [n, k]
    n_copies = (x[:, None, :] == x[None, :, :]).all(axis=2).sum(axis=1) - 1  # other copies of each point
    np.testing.assert_array_equal(duplicates.sum(axis=1), np.minimum(n_copies, k))

    # Separate gallery: the query's own copy counts too, first among the zero-distance ties.
    indices, _ = nearest_neighbors(x[:100], x, k=k, chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size)
    np.testing.assert_array_equal(indices, brute_force(x[:100], x, k, exclude_self=False)[0])


def _float_duplicates():
    """Unrounded normal data [700, 64] whose rows 500.. copy rows 0..199 at shifted positions: the
    BLAS sgemm rounds a copy differently from its original depending on where it sits in the block
    (OpenBLAS's edge kernels sum in another order), so only the re-ranking of near-ties can tie them."""
    x = np.random.default_rng(7).normal(size=(700, 64)).astype(np.float32)
    x[500:] = x[:200]
    return x


@pytest.mark.parametrize("chunk_size, gallery_chunk_size", [(1024, 4096), (7, 300), (61, 97)])
def test_default_search_ties_float_duplicates_by_index_whatever_the_chunks(chunk_size, gallery_chunk_size):
    x = _float_duplicates()
    indices, distances = nearest_neighbors(x, k=12, chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size)
    expected, expected_d = brute_force(x, x, 12, exclude_self=True)  # float64 distances, ties to the lower index
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, expected_d, rtol=1e-5, atol=1e-4)
    # A copy and its original are exact ties for every other query: the original (lower index) comes first.
    position = {int(j): p for p, j in enumerate(indices[300])}
    for original in range(200):
        if original + 500 in position and original in position:
            assert position[original] < position[original + 500]
    np.testing.assert_array_equal(indices[:200, 0], np.arange(500, 700))  # each original's copy is nearest...
    np.testing.assert_allclose(distances[:200, 0], 0.0, atol=1e-4)  # ...at 0 up to the expansion's cancellation


def test_default_search_screens_wider_when_ties_overflow_its_spare_width():
    # 40 copies of each of 5 points, k = 3: every query has 39 zero-distance candidates, far more than the
    # k + 8 the screen keeps at first, so the search must widen it (twice) to return the lowest indices.
    x = np.repeat(np.random.default_rng(8).normal(size=(5, 16)).astype(np.float32), 40, axis=0)
    x = x[np.random.default_rng(9).permutation(len(x))]
    for chunk_size, gallery_chunk_size in [(1024, 4096), (13, 17)]:
        indices, distances = nearest_neighbors(x, k=3, chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size)
        np.testing.assert_array_equal(indices, brute_force(x, x, 3, exclude_self=True)[0])
        np.testing.assert_array_equal(distances, 0.0)


@pytest.mark.parametrize("chunk_size, gallery_chunk_size", [(1024, 4096), (64, 100), (5, 7)])
def test_self_search_screens_each_block_pair_from_both_sides_like_a_separate_gallery(chunk_size, gallery_chunk_size):
    # A self-search multiplies each pair of blocks once and screens it row-wise and column-wise; a
    # separate gallery (a copy) takes the one-sided path. Both must return the same neighbours,
    # the query itself included (exclude_self=False), here on unrounded data with float duplicates.
    x = _float_duplicates()[:400]
    expected = brute_force(x, x, 9, exclude_self=False)
    for gallery in (None, x.copy()):
        indices, distances = nearest_neighbors(x, gallery, k=9, exclude_self=False, chunk_size=chunk_size,
                                               gallery_chunk_size=gallery_chunk_size)
        np.testing.assert_array_equal(indices, expected[0])
        np.testing.assert_allclose(distances, expected[1], rtol=1e-5, atol=1e-4)


def test_numpy_and_tf_backends_agree_on_exactly_computed_data(float_data):
    gallery, queries = float_data
    for backend_args in ({}, {"chunk_size": 99, "gallery_chunk_size": 301}):
        np.testing.assert_array_equal(nearest_neighbors(queries, gallery, k=15, **backend_args)[0],
                                      nearest_neighbors(queries, gallery, k=15, backend="tf")[0])


def test_exclude_self_false_in_a_self_search_keeps_self():
    x = _integer_data(n=500)
    indices, _ = nearest_neighbors(x, k=5, exclude_self=False, gallery_chunk_size=64)
    np.testing.assert_array_equal(indices, brute_force(x, x, 5, exclude_self=False)[0])


@pytest.mark.slow  # 1,100 x 200,000 x 512 multiply-adds in a fresh TensorFlow process
def test_chunked_search_memory_stays_bounded_on_200k_x_512():
    """Peak RSS increase of a subprocess searching 1,100 queries in a 200,000 x 512 gallery.

    Bound: with the default backend ("numpy", 1,024 queries x 4,096 gallery rows per block) the
    search holds one 16 MB score block, its 4 MB mask, the gallery's norms (0.8 MB) and [n, k]
    results: about 23 MB. The "tf" backend at its defaults (1,024 x 16,384) holds about 170 MB
    (143 MB measured; one 64 MB score block, its transient copy, a 32 MB gallery chunk). 400 MB leaves room for
    allocator slack, and fails for any unchunked variant: the full [1,100 x 200,000] distance
    matrix is 880 MB, one [1,024 x 200,000] row block is 820 MB, and a TensorFlow copy of the
    gallery alone is 410 MB (plus the blocks).
    """
    bound_mb = 400
    script = textwrap.dedent("""
        import json, resource, sys
        import numpy as np
        import tensorflow as tf
        from pddm_tf.evaluation import nearest_neighbors

        rng = np.random.default_rng(0)
        gallery = rng.standard_normal((200_000, 512), dtype=np.float32)
        queries = rng.standard_normal((1_100, 512), dtype=np.float32)
        tf.matmul(tf.ones((8, 8)), tf.ones((8, 8))).numpy()  # load the kernels and thread pools
        try:  # restart the peak from the current RSS (Linux >= 4.0); else the baseline is the peak so far
            open("/proc/self/clear_refs", "w").write("5")
        except OSError:
            pass
        peak_mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
        baseline = peak_mb()
        indices, distances = nearest_neighbors(queries, gallery, k=10)
        increase = peak_mb() - baseline
        sample = [0, 1, 1023, 1024, 1099]  # both query chunks, including the padded last one
        q = queries[sample].astype(np.float64)
        d = []  # float64 brute force, in gallery chunks to keep the check itself small
        for s in range(0, len(gallery), 20_000):
            g = gallery[s:s + 20_000].astype(np.float64)
            d.append(np.sum(g * g, axis=1)[:, None] - 2.0 * g @ q.T + np.sum(q * q, axis=1))  # [20000, 5]
        expected = np.argsort(np.concatenate(d).T, axis=1, kind="stable")[:, :10].tolist()
        json.dump({"increase_mb": increase, "baseline_mb": baseline, "shape": list(indices.shape),
                   "indices": indices[sample].tolist(), "expected": expected}, sys.stdout)
    """)
    # The bound is for TensorFlow's default Eigen matmul. With oneDNN (on by default on CPUs with
    # AVX-512/AMX, off on this AMD EPYC) the same search peaked at 486 MB (about 7.5 score blocks;
    # 124 MB with gallery_chunk_size=4096): pin it off so the test means the same on every CI machine.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            check=False, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["shape"] == [1100, 10]
    assert out["indices"] == out["expected"]
    assert out["increase_mb"] < bound_mb, out


# --------------------------------------------------------------------------- faiss backend


def test_faiss_backend_matches_tf_on_float_data(float_data):
    pytest.importorskip("faiss")
    x, queries = float_data
    tf_indices, tf_distances = nearest_neighbors(x, k=10, backend="tf")
    indices, distances = nearest_neighbors(x, k=10, backend="faiss")
    assert indices.dtype == np.int64 and distances.dtype == np.float32 and indices.shape == (3000, 10)
    np.testing.assert_array_equal(indices, tf_indices)
    np.testing.assert_allclose(distances, tf_distances, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(indices, brute_force(x, x, 10, exclude_self=True)[0])

    indices, _ = nearest_neighbors(queries, x, k=10, backend="faiss")
    np.testing.assert_array_equal(indices, nearest_neighbors(queries, x, k=10, backend="tf")[0])
    auto, _ = nearest_neighbors(queries, x, k=10, backend="auto")
    np.testing.assert_array_equal(auto, indices)


def test_faiss_backend_exclude_self_with_many_duplicates():
    # ~25 copies of each point and k = 10: a query's own index is often not among its k + 1
    # faiss results (lower-index copies come first); only self may ever be dropped.
    pytest.importorskip("faiss")
    x = _integer_data()
    indices, distances = nearest_neighbors(x, k=10, backend="faiss")
    expected, expected_d = brute_force(x, x, 10, exclude_self=True)
    np.testing.assert_array_equal(indices, expected)  # faiss 1.15 also breaks exact ties by index
    np.testing.assert_array_equal(distances, expected_d.astype(np.float32))


def test_faiss_backend_missing_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        nearest_neighbors(x, k=2, backend="faiss")
    indices, _ = nearest_neighbors(x, k=2, backend="auto")  # falls back to numpy
    np.testing.assert_array_equal(indices, [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1]])


# --------------------------------------------------------------------------- errors


def test_rejects_bad_input():
    x = np.zeros((5, 3), np.float32)
    bad = x.copy()
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="queries contain NaN or inf"):
        nearest_neighbors(bad, x, k=1)
    with pytest.raises(ValueError, match="gallery embeddings contain NaN or inf"):
        nearest_neighbors(x, np.where(bad == 0, np.nan, 0), k=1)
    with pytest.raises(ValueError, match="2-D"):
        nearest_neighbors(x, np.zeros((2, 3, 1)), k=1)
    with pytest.raises(ValueError, match="empty"):
        nearest_neighbors(np.zeros((0, 3)), x, k=1)
    with pytest.raises(ValueError, match="dimension"):
        nearest_neighbors(x, np.zeros((5, 2)), k=1)
    with pytest.raises(ValueError, match="k must be in \\[1, 4\\]"):
        nearest_neighbors(x, k=5)
    with pytest.raises(ValueError, match="k must be in \\[1, 5\\]"):
        nearest_neighbors(x, x, k=0)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        nearest_neighbors(x, k=1, chunk_size=0)
    with pytest.raises(ValueError, match="gallery_chunk_size must be positive"):
        nearest_neighbors(x, k=1, gallery_chunk_size=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        nearest_neighbors(x, k=1, backend="annoy")
