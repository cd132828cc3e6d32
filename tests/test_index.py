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


# Index.load of hostile or damaged files: one clear error each, before anything large is read (issue 34, item 5).

def _saved_index(tmp_path):
    index = Index()
    index.add(np.arange(40, dtype=np.float32).reshape(10, 4), np.arange(10))
    return pathlib.Path(index.save(tmp_path / "good"))


def _npz_member(path, name, header_shape, dtype="<f4", data=b"", compress=False):
    """An .npz whose member `name`.npy declares `header_shape` and holds `data` (maybe not what it declares)."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}.npy", header.getvalue() + data)
        archive.writestr("backend.npy", _npy(np.array("numpy")))


def _npy(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("case,message", [
    ("zero_bytes", r"is empty \(0 bytes\), not an index file"),
    ("truncated", "not an index file: truncated or corrupt .npz archive"),
    ("random", "not an index file: not a .npz archive"),
    ("npy", r"is a single .npy array, not an index file \(.npz written by Index.save\)"),
    ("missing_key", r"not an index file: no 'embeddings' array \(it holds \['backend', 'labels'\]\)"),
    ("complex", r"the 'embeddings' array has dtype complex64 \(complex numbers\); expected real floats or integers"),
    ("pickled", r"the 'labels' array holds Python objects \(pickled data\)"),
    ("forged_header", r"declares \(200000000, 64\) float32 \(51,200,000,000 bytes\) but its member holds 16"),
    ("one_dimensional", r"embeddings must be 2-D \[g, d\], got shape \(40,\)"),
    ("labels_length", r"labels must have shape \[10\], got \(3,\)"),
])
def test_load_refuses_bad_files_with_one_clear_error(tmp_path, case, message):
    good = _saved_index(tmp_path)
    path = tmp_path / f"{case}.npz"
    if case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "npy":
        np.save(path.with_suffix(".npy"), np.zeros((3, 4), np.float32))
        path = path.with_suffix(".npy")
    elif case == "missing_key":
        np.savez(path, labels=np.arange(3), backend=np.array("numpy"))
    elif case == "complex":
        np.savez(path, embeddings=np.ones((3, 4), np.complex64), backend=np.array("numpy"))
    elif case == "pickled":
        np.savez(path, embeddings=np.ones((3, 4), np.float32), labels=np.array([{}, 1, "a"], dtype=object),
                 backend=np.array("numpy"))
    elif case == "forged_header":
        _npz_member(path, "embeddings", (200_000_000, 64), data=b"\0" * 16)
    elif case == "one_dimensional":
        np.savez(path, embeddings=np.ones(40, np.float32), backend=np.array("numpy"))
    elif case == "labels_length":
        np.savez(path, embeddings=np.ones((10, 4), np.float32), labels=np.arange(3), backend=np.array("numpy"))
    with pytest.raises(ValueError, match=message) as error:
        Index.load(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert len(Index.load(good)) == 10  # the good file still loads
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "absent.npz")


def test_load_refuses_a_file_past_the_stated_cap(tmp_path):
    good = _saved_index(tmp_path)  # 10 x 4 float32 + 10 int64 labels + two small strings
    with pytest.raises(ValueError, match=r"declares 2\d\d bytes of arrays \(.*embeddings \(10, 4\) float32.*\) in a "
                                         r"[\d,]+-byte file; the limit is 200 \(max_bytes=200"):
        Index.load(good, max_bytes=200)
    assert len(Index.load(good, max_bytes=10_000)) == 10


def test_load_of_a_compression_bomb_fails_fast_in_bounded_memory(tmp_path):
    import time
    import tracemalloc

    # 1.5 GB of zeros declared as 5,859,375 x 64 float32 in an .npz of about 1.5 MB.
    rows, dim = 5_859_375, 64
    path = tmp_path / "bomb.npz"
    _deflated_zeros_npz(path, _npy_header(rows, dim), rows * dim * 4)
    assert path.stat().st_size < 2_000_000
    import zipfile

    with zipfile.ZipFile(path) as archive, archive.open("embeddings.npy") as member:  # a genuine bomb: it inflates
        start = member.read(1 << 23)
        assert start[:len(_npy_header(rows, dim))] == _npy_header(rows, dim) and not any(start[200:])
        assert archive.getinfo("embeddings.npy").file_size == rows * dim * 4 + len(_npy_header(rows, dim))
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"declares 1,500,000,0\d\d bytes of arrays \(embeddings \(5859375, 64\) "
                                         r"float32.* the limit is [\d,]+ \(.*64x the file size\)"):
        Index.load(path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 16 << 20, (seconds, peak)


def _npy_header(rows, dim):
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    return buffer.getvalue()


def _deflated_zeros_npz(path, header, zero_bytes):
    """An .npz whose embeddings.npy member is `header` + `zero_bytes` zeros, deflated, written without ever
    holding or compressing the whole: after a full flush, zlib compresses each identical 4 MB block of
    zeros to the same bytes, so one block's output is repeated (the member's CRC is computed as zlib would)."""
    import struct
    import zlib

    block = bytes(1 << 22)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert first == repeated
    blocks, rest = divmod(zero_bytes, len(block))
    tail = compressor.compress(bytes(rest)) + compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(header)
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(bytes(rest), crc)
    members = [(b"embeddings.npy", 8, crc, len(header) + zero_bytes, [head] + [first] * blocks + [tail]),
               (b"backend.npy", 0, zlib.crc32(_npy(np.array("numpy"))), len(_npy(np.array("numpy"))),
                [_npy(np.array("numpy"))])]
    central, offset = b"", 0
    with open(path, "wb") as f:
        for name, method, crc, size, chunks in members:
            compressed = sum(len(c) for c in chunks)
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, compressed, size, len(name), 0)
                    + name)
            for chunk in chunks:
                f.write(chunk)
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, compressed,
                                   size, len(name), 0, 0, 0, 0, 0, offset) + name
            offset += 30 + len(name) + compressed
        f.write(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                                      offset, 0))
