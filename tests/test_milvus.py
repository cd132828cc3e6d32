"""The gallery in Milvus, against the real Milvus Lite engine (no mock): exact results with FLAT, recall with
HNSW, the stored model's identity, and `pddm-tf index` resuming after a SIGKILL (subprocesses)."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import pddm_tf  # noqa: E402
from pddm_tf import data  # noqa: E402
from pddm_tf.cli.commands._gallery import recall_at_k  # noqa: E402
from pddm_tf.evaluation.index import Index  # noqa: E402
from pddm_tf.export import export_saved_model  # noqa: E402
from pddm_tf.vectordb.images import ExportedEmbedder, list_images  # noqa: E402
from pddm_tf.vectordb.milvus import MilvusGallery, ModelMismatchError, file_id  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE, CLASSES, GALLERY_PER_CLASS, QUERIES_PER_CLASS = 28, 6, 8, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A fresh model's export, a gallery folder (6 Omniglot characters x 8 drawers, folder = label) and a
    held-out query folder (2 other drawers of each), and the export's embeddings of both."""
    root = tmp_path_factory.mktemp("milvus")
    files = data.load_omniglot(test_fraction=0.0).train
    picks = []
    for c in range(CLASSES):
        for j, i in enumerate(np.flatnonzero(files.labels == c)[:GALLERY_PER_CLASS + QUERIES_PER_CLASS]):
            folder = root / ("gallery" if j < GALLERY_PER_CLASS else "queries") / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(files.paths[i], folder)
            picks.append(i)
    keras.utils.set_random_seed(0)
    model = pddm_tf.MetricLossModel(pddm_tf.small_convnet(SIZE, 1, width=8, depth=2), pddm_tf.ContrastiveLoss(),
                                    embedding_dim=16)
    model.build((None, SIZE, SIZE, 1))
    # An untrained backbone's features share a large common part, so its unit embeddings lie within ~0.01 of
    # each other, where float32 rounding reorders neighbours: centre the projection on these images' mean
    # feature, which spreads them over the sphere (distances of order 1).
    subset = data.ImageFiles(files.paths[picks], files.labels[picks], files.class_names, files.rotations[picks])
    pixels = np.concatenate([x.numpy() for x, _ in data.evaluation_dataset(subset, SIZE, 1, batch_size=64)])
    dense = model.head._projections[0]
    dense.bias.assign(-np.asarray(model.backbone(pixels)).mean(0) @ np.asarray(dense.kernel))
    export = export_saved_model(model, root / "export", SIZE, 1)
    embedder = ExportedEmbedder(export)
    gallery_files, query_files = list_images(root / "gallery"), list_images(root / "queries")
    gallery, kept = embedder.embed(gallery_files)
    queries, kept_queries = embedder.embed(query_files)
    assert len(kept) == len(gallery_files) == CLASSES * GALLERY_PER_CLASS and len(kept_queries) == len(query_files)
    return dict(root=root, export=export, embedder=embedder, gallery_files=gallery_files, query_files=query_files,
                gallery=gallery, queries=queries)


def _fill(setup, uri, index_type, index_params=None):
    gallery = MilvusGallery(str(uri), "test").open(setup["embedder"].info, create=True, index_type=index_type,
                                                   index_params=index_params)
    files = setup["gallery_files"]
    for start in range(0, len(files), 20):
        part = files[start:start + 20]
        gallery.upsert([f.id for f in part], setup["gallery"][start:start + 20], [f.label for f in part],
                       [f.relative for f in part])
    return gallery


def _exact(setup, k):
    """Brute force in float64: [n, k] gallery rows by ascending squared distance, and the distances."""
    q, g = setup["queries"].astype(np.float64), setup["gallery"].astype(np.float64)
    d = ((q[:, None] - g[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1), d


def _assert_exact(setup, hits_per_query, k):
    """Milvus' hits equal the exact `Index`'s and brute force's: the same rows, rank by rank, at the same
    distances."""
    index = Index()
    index.add(setup["gallery"])
    exact = index.search(setup["queries"], k=k)
    order, distances, all_distances = _exact(setup, k)
    np.testing.assert_allclose(exact.distances, distances, rtol=1e-4, atol=1e-5)
    # Consecutive exact neighbours (and the k+1-th) are >= 10x the tolerance apart: a swap would be caught.
    gaps = np.diff(np.concatenate([distances, np.sort(all_distances, axis=1)[:, k:k + 1]], axis=1), axis=1)
    assert gaps.min() > 1e-4, gaps.min()
    row_of = {f.id: i for i, f in enumerate(setup["gallery_files"])}
    for q, hits in enumerate(hits_per_query):
        rows = [row_of[h["id"]] for h in hits]
        assert [h["path"] for h in hits] == [setup["gallery_files"][r].relative for r in rows]
        assert [h["label"] for h in hits] == [setup["gallery_files"][r].label for r in rows]
        assert rows == exact.indices[q].tolist() == order[q].tolist()
        np.testing.assert_allclose([h["distance"] for h in hits], exact.distances[q], rtol=1e-4, atol=1e-5)


def test_flat_collection_returns_the_exact_index_results(setup, tmp_path):
    gallery = _fill(setup, tmp_path / "flat.db", "FLAT")
    try:
        assert gallery.count() == CLASSES * GALLERY_PER_CLASS
        _assert_exact(setup, gallery.search(setup["queries"], k=5), k=5)
        # Upserting the same files again adds nothing (ids come from the relative paths).
        files = setup["gallery_files"][:10]
        gallery.upsert([f.id for f in files], setup["gallery"][:10], [f.label for f in files],
                       [f.relative for f in files])
        assert gallery.count() == CLASSES * GALLERY_PER_CLASS
        assert gallery.present_ids([files[0].id, 12345]) == {files[0].id}
    finally:
        gallery.close()


def test_hnsw_collection_recall_against_exact(setup, tmp_path):
    gallery = _fill(setup, tmp_path / "hnsw.db", "HNSW", {"M": 8, "efConstruction": 64})
    try:
        assert gallery.index_type == "HNSW"
        k = 10
        hits = gallery.search(setup["queries"], k=k, search_params={"ef": 16})
    finally:
        gallery.close()
    order, distances, all_distances = _exact(setup, k)
    row_of = {f.id: i for i, f in enumerate(setup["gallery_files"])}
    found = np.array([[row_of[h["id"]] for h in row] for row in hits])
    # Neighbour recall@10 against brute force, counting a row tied with the exact 10th as found.
    within = np.take_along_axis(all_distances, found, axis=1) <= distances[:, -1:] * (1 + 1e-3)
    assert within.mean() >= 0.95
    assert len({tuple(sorted(row)) for row in found}) > 1  # not one answer for every query
    # Label Recall@K of the search equals the one of the exact neighbours' labels (computed here by hand).
    labels = np.array([f.label for f in setup["gallery_files"]])
    query_labels = [f.label for f in setup["query_files"]]
    by_hand = np.mean([query_labels[q] in labels[order[q, :1]] for q in range(len(order))])
    assert recall_at_k(query_labels, [[h["label"] for h in row] for row in hits], k)["recall@1"] == pytest.approx(
        by_hand, abs=1 / len(order) + 1e-9)


def test_collection_refuses_another_model(setup, tmp_path):
    gallery = _fill(setup, tmp_path / "model.db", "FLAT")
    gallery.close()
    info = setup["embedder"].info
    assert info.dim == 16 and info.version == "1" and info.checksum
    other = MilvusGallery(str(tmp_path / "model.db"), "test")
    try:
        with pytest.raises(ModelMismatchError, match="holds embeddings of export version 1"):
            other.open(dataclasses.replace(info, checksum="0"))
        with pytest.raises(ModelMismatchError, match="d=32"):
            other.open(dataclasses.replace(info, dim=32))
        with pytest.raises(ValueError, match="no collection 'missing'"):
            MilvusGallery(str(tmp_path / "model.db"), "missing").open(info)
        # The same model under another folder name is the same model (the SavedModel checksum decides).
        assert other.open(dataclasses.replace(info, name="renamed")).count() == CLASSES * GALLERY_PER_CLASS
    finally:
        other.close()


def test_file_ids_are_stable_positive_int64():
    assert file_id("class0/a.png") == file_id("class0/a.png") != file_id("class0/b.png")
    ids = [file_id(f"c{i}/{j}.png") for i in range(50) for j in range(50)]
    assert len(set(ids)) == len(ids) and all(0 <= i < 2 ** 63 for i in ids)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return [sys.executable, "-m", "pddm_tf.cli", *args], env


@pytest.mark.slow
def test_index_killed_mid_run_resumes_without_duplicates(setup, tmp_path):
    uri = str(tmp_path / "resume.db")
    args, env = _cli("index", f"--model_dir={setup['export']}", f"--images={setup['root'] / 'gallery'}",
                     f"--milvus_uri={uri}", "--batch_size=4", "--index_type=FLAT")
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    seen = []
    for line in process.stderr:  # the info line of each upserted batch
        seen.append(line)
        if "batch 3/12 upserted" in line:
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    gallery = MilvusGallery(uri, "pddm_gallery").open(setup["embedder"].info)
    partial = gallery.count()
    gallery.close()
    total = CLASSES * GALLERY_PER_CLASS
    assert 12 <= partial < total
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{partial} already in 'pddm_gallery', {total - partial} to index" in rerun.stdout
    gallery = MilvusGallery(uri, "pddm_gallery").open(setup["embedder"].info)
    try:
        assert gallery.count() == total
        assert gallery.present_ids([f.id for f in setup["gallery_files"]]) == {f.id for f in setup["gallery_files"]}
    finally:
        gallery.close()


@pytest.mark.slow
def test_search_command_prints_neighbours_and_recall(setup, tmp_path):
    gallery = _fill(setup, tmp_path / "search.db", "FLAT")
    gallery.close()
    out = tmp_path / "out.json"
    args, env = _cli("search", f"--model_dir={setup['export']}", f"--images={setup['root'] / 'queries'}",
                     f"--milvus_uri={tmp_path / 'search.db'}", "--collection=test", "--top_k=4", f"--json={out}")
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert [q["path"] for q in payload["queries"]] == [f.relative for f in setup["query_files"]]
    _assert_exact(setup, [q["neighbours"] for q in payload["queries"]], k=4)
    order, _, _ = _exact(setup, 4)
    labels = np.array([f.label for f in setup["gallery_files"]])
    query_labels = [f.label for f in setup["query_files"]]
    hits = [[n["label"] for n in q["neighbours"]] for q in payload["queries"]]
    for k in (1, 2, 4):
        expected = np.mean([query_labels[q] in hits[q][:k] for q in range(len(hits))])
        assert payload["metrics"][f"recall@{k}"] == pytest.approx(expected)
        assert f"recall@{k} {expected:.4f}" in result.stdout
    # The CLI's Recall@4 is the exact neighbours' (ties aside, checked above).
    exact4 = np.mean([query_labels[q] in labels[order[q]] for q in range(len(order))])
    assert abs(payload["metrics"]["recall@4"] - exact4) <= 2 / len(order)
    assert "class0/" in result.stdout and "rank  distance" in result.stdout


def test_cli_refuses_bad_gallery_flags():
    args, env = _cli("search", "--images=/nonexistent", "--model_dir=/nonexistent", "--top_k=0")
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--top_k=0 is out of range" in result.stderr
    args, env = _cli("index", "--images=/x", "--model_dir=/y", '--index_params={"M": "a"}')
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "expected a JSON object of integers" in result.stderr
