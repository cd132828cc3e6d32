"""Serving: the exported signatures (search included) in a fresh process without pddm_tf, saved_model_cli,
atomic versions, the `.keras` round trip and the client's REST / gRPC requests."""

import base64
import importlib.util
import json
import os
import pathlib
import resource
import struct
import subprocess
import sys
import textwrap
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import PDDM, PDDMModel, data, small_convnet
from pddm_tf.cli import main as cli
from pddm_tf.data import image_header
from pddm_tf.evaluation import nearest_neighbors, rerank_shortlist
from pddm_tf.export import embed_gallery, export_saved_model, load_keras_model, save_keras_model

SIZE = 16
K = 4  # neighbours returned by search
RERANK = 8  # shortlist of the second export
# float32 through the same graph ops in both processes; only op fusion / threading order can differ.
ATOL = 1e-5
# Ranks closer than this (squared distance or PDDM score) may legitimately swap between two float32 graphs.
TIE = 1e-5
SIGNATURES = {"serving_default", "embed_pixels", "pddm_similarity", "search"}
_ROOT = pathlib.Path(__file__).resolve().parents[1]

_LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    spec = json.load(open(sys.argv[1]))
    encoded = tf.constant([open(p, "rb").read() for p in spec["queries"]])
    out = {}
    for version, path in spec["versions"].items():
        signatures = tf.saved_model.load(path).signatures
        out[f"{version}/signatures"] = np.array(sorted(signatures.keys()))
        out[f"{version}/bytes"] = signatures["serving_default"](images=encoded)["embeddings"].numpy()
        out[f"{version}/pixels"] = signatures["embed_pixels"](pixels=tf.constant(np.load(spec["pixels"])))[
            "embeddings"].numpy()
        e = out[f"{version}/pixels"]
        out[f"{version}/pddm"] = signatures["pddm_similarity"](embeddings_a=tf.constant(e[:5]),
                                                            embeddings_b=tf.constant(e[5:10]))["scores"].numpy()
        for name, value in signatures["search"](images=encoded).items():
            value = value.numpy()
            out[f"{version}/search/{name}"] = value.astype(bytes) if value.dtype == object else value
    assert not any(m.startswith("pddm_tf") for m in sys.modules), "pddm_tf was imported"
    np.savez(spec["out"], **out)
""")


def _pixels(paths: np.ndarray) -> np.ndarray:
    """The training pipeline's decoding of `paths`: [n, SIZE, SIZE, 1]."""
    files = data.ImageFiles(paths, np.zeros(len(paths), np.int32), ("x",), np.zeros(len(paths), np.int32))
    return np.concatenate([x.numpy() for x, _ in data.evaluation_dataset(files, SIZE, 1, batch_size=16)])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One tiny PDDM model, saved as .keras and reloaded, exported twice (v1 plain search, v2 re-ranked)
    into one base folder, and every signature's outputs from a fresh process without pddm_tf."""
    tmp = tmp_path_factory.mktemp("serving")
    keras.utils.set_random_seed(5)
    model = PDDMModel(small_convnet(SIZE, 1, width=8), embedding_dim=8, pddm=PDDM(units=8, combined_units=8))
    model.build((None, SIZE, SIZE, 1))
    split = data.load_omniglot(test_fraction=0.5, seed=0)
    _calibrate_batchnorm(model.backbone, _pixels(split.train.paths[::10]))
    model = load_keras_model(save_keras_model(model, tmp / "model.keras"))  # what `pddm-tf export` starts from
    files = split.test
    picks = np.random.default_rng(0).choice(len(files), size=52, replace=False)
    gallery_paths, query_paths = files.paths[picks[:40]], files.paths[picks[40:]]
    gallery_ids = [f"item-{i}:{os.path.basename(p)}" for i, p in enumerate(gallery_paths)]
    gallery = embed_gallery(model, gallery_paths, gallery_ids, SIZE, 1)
    root = tmp / "serving"
    v1 = export_saved_model(model, root, SIZE, 1, gallery=gallery, search_k=K)
    v1_files = {p: p.read_bytes() for p in pathlib.Path(v1).rglob("*") if p.is_file()}
    v2 = export_saved_model(model, root, SIZE, 1, gallery=gallery, search_k=K, rerank=RERANK)
    pixels = _pixels(query_paths)
    np.save(tmp / "pixels.npy", pixels)
    spec = {"queries": [str(p) for p in query_paths], "pixels": str(tmp / "pixels.npy"), "out": str(tmp / "out.npz"),
            "versions": {"1": v1, "2": v2}}
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-c", _LOADER, str(tmp / "spec.json")], check=True, env=env, cwd=tmp, timeout=300)
    return {"model": model, "root": root, "v1": v1, "v2": v2, "v1_files": v1_files, "pixels": pixels,
            "query_paths": query_paths, "gallery": gallery, "gallery_pixels": _pixels(gallery_paths),
            "out": dict(np.load(tmp / "out.npz"))}


def _calibrate_batchnorm(backbone: keras.Model, pixels: np.ndarray) -> None:
    """Sets each BatchNormalization's moving statistics to its input's statistics on `pixels`.

    Untrained, inference-mode BN (mean 0, variance 1) maps every image to nearly the same embedding
    (squared distances ~1e-3, gaps ~1e-6): calibrated, embeddings spread out and the order of
    neighbours is well defined, so the search comparisons below are meaningful.
    """
    for layer in [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]:
        inputs = keras.Model(backbone.input, layer.input)(pixels).numpy()
        layer.moving_mean.assign(inputs.mean(axis=(0, 1, 2)))
        layer.moving_variance.assign(inputs.var(axis=(0, 1, 2)))


def _no_close_ranks(values: np.ndarray, upto: int) -> np.ndarray:
    """[n] bool: row's sorted `values` have no two of the first `upto` + 1 within TIE (no ambiguous order)."""
    ordered = np.sort(values, axis=1)[:, : upto + 1]
    return (np.diff(ordered, axis=1) > TIE).all(axis=1)


def test_signatures_match_keras_in_a_fresh_process(served):
    model, out = served["model"], served["out"]
    expected = model.predict(served["pixels"], verbose=0)
    expected_scores = model.pddm((expected[:5], expected[5:10])).numpy()
    for version in ("1", "2"):
        assert set(out[f"{version}/signatures"]) == SIGNATURES
        np.testing.assert_allclose(out[f"{version}/bytes"], expected, atol=ATOL)
        np.testing.assert_allclose(out[f"{version}/pixels"], expected, atol=ATOL)
        np.testing.assert_allclose(out[f"{version}/pddm"], expected_scores, atol=ATOL)


def test_search_equals_brute_force_numpy(served):
    out, gallery = served["out"], served["gallery"]
    queries = served["model"].predict(served["pixels"], verbose=0).astype(np.float64)
    # Brute force in float64 over the gallery embedded independently (model.predict on the decoded pixels).
    gallery_embeddings = served["model"].predict(served["gallery_pixels"], verbose=0).astype(np.float64)
    np.testing.assert_allclose(gallery.embeddings, gallery_embeddings, atol=ATOL)
    distances = np.sum((queries[:, None] - gallery_embeddings[None]) ** 2, axis=-1)  # [n, g]
    expected = np.argsort(distances, axis=1, kind="stable")[:, :K]
    got = out["1/search/indices"]
    assert got.shape == (len(queries), K)
    # Exactly the k smallest distances, in order, whatever the tie-breaking...
    np.testing.assert_allclose(np.take_along_axis(distances, got, axis=1),
                               np.take_along_axis(distances, expected, axis=1), atol=ATOL)
    np.testing.assert_allclose(out["1/search/distances"], np.take_along_axis(distances, got, axis=1), atol=ATOL)
    np.testing.assert_allclose(out["1/search/scores"], -out["1/search/distances"])
    # ...and the same ids wherever the order is unambiguous (most rows of this data).
    clear = _no_close_ranks(distances, K)
    assert clear.sum() >= len(clear) // 2
    np.testing.assert_array_equal(got[clear], expected[clear])
    np.testing.assert_array_equal(out["1/search/ids"].astype(str), gallery.ids[got])


def test_reranked_search_equals_rerank_shortlist(served):
    out, model, gallery = served["out"], served["model"], served["gallery"]
    queries = model.predict(served["pixels"], verbose=0)
    shortlist, _ = nearest_neighbors(queries, gallery.embeddings, k=RERANK)

    def pair_scores(a, b):
        return model.pddm((a, b)).numpy()

    expected = rerank_shortlist(queries, gallery.embeddings, shortlist, pair_scores)[:, :K]
    got = out["2/search/indices"]
    # The returned scores are the PDDM scores of the returned pairs, in descending order.
    rows = np.repeat(np.arange(len(queries)), K)
    np.testing.assert_allclose(out["2/search/scores"].reshape(-1),
                               pair_scores(queries[rows], gallery.embeddings[got.reshape(-1)]), atol=ATOL)
    assert (np.diff(out["2/search/scores"], axis=1) <= 0).all()
    # Same ids wherever neither the shortlist boundary nor the PDDM order is ambiguous.
    distances = np.sum((queries[:, None].astype(np.float64) - gallery.embeddings[None]) ** 2, axis=-1)
    shortlist_scores = pair_scores(queries[np.repeat(np.arange(len(queries)), RERANK)],
                                   gallery.embeddings[shortlist.reshape(-1)]).reshape(-1, RERANK)
    clear = _no_close_ranks(distances, RERANK) & _no_close_ranks(-shortlist_scores, RERANK - 1)
    assert clear.sum() >= len(clear) // 2
    np.testing.assert_array_equal(got[clear], expected[clear])
    assert not np.array_equal(out["2/search/indices"], out["1/search/indices"])  # re-ranking changed something


def test_saved_model_cli_lists_predict_signatures(served):
    cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    shown = subprocess.run([str(cli), "show", "--dir", served["v2"], "--all"], check=True, capture_output=True,
                           text=True, env=env, timeout=300).stdout
    blocks = {block.split("'")[0]: block for block in shown.split("signature_def['")[1:]}
    assert SIGNATURES <= set(blocks)
    for name in SIGNATURES:
        assert "Method name is: tensorflow/serving/predict" in blocks[name], name
    assert "outputs['ids'] tensor_info:" in blocks["search"] and "dtype: DT_STRING" in blocks["search"]


def test_a_batch_with_undecodable_images_names_the_first(served):
    """serving_default and search refuse bad bytes with InvalidArgumentError naming the first bad image's index."""
    signatures = tf.saved_model.load(served["v2"]).signatures
    good = [pathlib.Path(p).read_bytes() for p in served["query_paths"][:3]]
    truncated_gif = b"GIF"  # shorter than any image signature
    for batch, first_bad in (([good[0], b"not an image", good[1], b""], 1),
                             ([good[0], good[1], good[2], truncated_gif, b"junk"], 3),
                             ([b"", *good], 0)):
        for name in ("serving_default", "search"):
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=f"image {first_bad} of the batch \\(counting from 0\\) is not a PNG, JPEG, GIF "
                                     "or BMP file"):
                signatures[name](images=tf.constant(batch))
    # A batch of good images still decodes, to the embeddings of the model.
    embeddings = signatures["serving_default"](images=tf.constant(good))["embeddings"].numpy()
    np.testing.assert_allclose(embeddings, served["model"].predict(served["pixels"][:3], verbose=0), atol=ATOL)


def _png_bomb(side: int) -> bytes:
    """A valid side x side 8-bit gray PNG of zeros, about 1 KB per million pixels (388 KB for 20,000 x 20,000).

    Built from one compressed block of 100 rows, repeated: a full flush starts every block afresh, so
    equal blocks compress to equal bytes. The Adler-32 of n zero bytes is (n mod 65521) << 16 | 1.
    """
    rows = 100
    assert side % rows == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: header and checksum added below
    unit = compressor.compress(bytes((side + 1) * rows)) + compressor.flush(zlib.Z_FULL_FLUSH)  # filter byte + row
    size = (side + 1) * side
    stream = b"\x78\xda" + unit * (side // rows) + compressor.flush() + struct.pack(">I", (size % 65521) << 16 | 1)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


def _peak_rss_bytes(reset: bool = False) -> int:
    """The process's peak resident memory; `reset` first lowers the peak to the current use (Linux >= 4.0)."""
    if reset:
        try:
            pathlib.Path("/proc/self/clear_refs").write_text("5")
        except OSError:  # not Linux: the peak so far stays, which only makes the check below looser
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def test_a_decompression_bomb_is_refused_before_decoding_and_costs_no_memory(served):
    """A 388 KB PNG declaring 20,000 x 20,000 pixels (decoding: 400 MB of uint8, then 1.6 GB of float32)
    is refused by its header; the server's peak memory does not move; normal images serve unchanged."""
    small = _png_bomb(300)
    np.testing.assert_array_equal(tf.io.decode_png(small).numpy(), np.zeros((300, 300, 1)))  # the builder is valid
    bomb = _png_bomb(20_000)
    assert len(bomb) < 400_000
    loaded = tf.saved_model.load(served["v2"])
    assert int(loaded.max_image_pixels[0].numpy()) == 16_000_000  # the default limit, kept in the SavedModel
    good = [pathlib.Path(p).read_bytes() for p in served["query_paths"][:2]]
    expected = served["model"].predict(served["pixels"][:2], verbose=0)
    for name in ("serving_default", "search"):  # first calls: whatever they allocate once happens here
        loaded.signatures[name](images=tf.constant(good))

    before = _peak_rss_bytes(reset=True)
    for name in ("serving_default", "search"):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match="image 1 of the batch \\(counting from 0\\) is 20000 x 20000 = 400000000 pixels "
                                 "\\(width x height\\), over the limit of 16000000 pixels \\(max_image_pixels\\)"):
            loaded.signatures[name](images=tf.constant([good[0], bomb, good[1]]))
    grown = _peak_rss_bytes() - before
    assert grown < 64 * 2**20, f"serving the refused bomb raised the peak memory by {grown / 2**20:.0f} MB"
    served_good = loaded.signatures["serving_default"](images=tf.constant(good))["embeddings"].numpy()
    np.testing.assert_allclose(served_good, expected, atol=ATOL)


def test_second_version_leaves_the_first_intact_and_interrupted_export_leaves_nothing(served, monkeypatch):
    root = pathlib.Path(served["root"])
    assert (os.path.basename(served["v1"]), os.path.basename(served["v2"])) == ("1", "2")
    assert {p: p.read_bytes() for p in pathlib.Path(served["v1"]).rglob("*") if p.is_file()} == served["v1_files"]

    def broken(self, path, *args, **kwargs):
        os.makedirs(path)
        (pathlib.Path(path) / "saved_model.pb").write_bytes(b"partial")
        raise OSError("killed midway")

    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", broken)
    with pytest.raises(OSError, match="killed midway"):
        export_saved_model(served["model"], root, SIZE, 1, gallery=served["gallery"], search_k=K)
    assert sorted(os.listdir(root)) == ["1", "2"]


def test_keras_file_round_trip_is_atomic(served, tmp_path, monkeypatch):
    model = served["model"]
    path = save_keras_model(model, tmp_path / "m.keras")
    np.testing.assert_allclose(load_keras_model(path).predict(served["pixels"], verbose=0),
                               model.predict(served["pixels"], verbose=0), atol=1e-6)
    before = pathlib.Path(path).read_bytes()

    def broken_save(self, filepath, *args, **kwargs):
        pathlib.Path(filepath).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_keras_model(model, path)
    assert pathlib.Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["m.keras"]  # no temporary file left


def _client():
    spec = importlib.util.spec_from_file_location("serve_client", _ROOT / "examples" / "serve_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_client_requests_decode_to_the_same_inputs(served, tmp_path):
    client = _client()
    folder = tmp_path / "queries"
    folder.mkdir()
    paths = served["query_paths"][:5]
    for i, path in enumerate(paths):
        (folder / f"q{i}.png").write_bytes(pathlib.Path(path).read_bytes())
    names, images = client.read_images(folder)
    assert names == [f"q{i}.png" for i in range(5)]
    # REST: through JSON text and back, base64-decoded independently of the client.
    body = json.loads(json.dumps(client.rest_request("search", images)))
    assert body["signature_name"] == "search"
    assert [base64.b64decode(row["images"]["b64"]) for row in body["instances"]] == images
    # gRPC: through the wire format and back.
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest.FromString(client.grpc_request("pddm", "search", images).SerializeToString())
    assert (request.model_spec.name, request.model_spec.signature_name) == ("pddm", "search")
    assert request.inputs["images"].dtype == tf.string.as_datatype_enum
    assert list(tf.make_ndarray(request.inputs["images"])) == images
    # In-process, both requests' inputs give the ids the fresh process got for the same images.
    for inputs in (client.rest_inputs(body), client.grpc_inputs(request)):
        outputs = client.run_in_process(str(served["root"]), "search", inputs)  # base folder: latest = v2
        np.testing.assert_array_equal(outputs["ids"], served["out"]["2/search/ids"][:5])


def _cli(*args: str) -> None:
    """Runs `pddm-tf <args>` in this process (a subprocess would re-import TensorFlow: ~10 s each)."""
    from absl import flags

    from pddm_tf.cli import main as cli

    try:
        flags.FLAGS(["pddm-tf", *args])
        cli.main(["pddm-tf", args[0]])
    finally:
        flags.FLAGS.unparse_flags()


def test_cli_train_saves_keras_and_export_adds_a_searchable_version(served, tmp_path, capsys):
    gallery = tmp_path / "catalog"
    paths = served["query_paths"][:6]
    for i, path in enumerate(paths):
        (gallery / f"shelf{i % 2}").mkdir(parents=True, exist_ok=True)
        (gallery / f"shelf{i % 2}" / f"item{i}.png").write_bytes(pathlib.Path(path).read_bytes())
    keras_file = tmp_path / "trained.keras"
    _cli("train", "--epochs=0", "--test_fraction=0", f"--image_size={SIZE}", "--backbone_width=8",
         "--embedding_dim=8", f"--save_model={keras_file}")
    assert sorted(os.listdir(tmp_path)) == ["catalog", "trained.keras"]  # no temporary file left
    root = tmp_path / "serving"
    # Version 2 with the smallest limit the 105 x 105 gallery images pass (the gallery is embedded under it).
    limits = {"1": [], "2": [f"--max_image_pixels={105 * 105}"]}
    for expected_version in ("1", "2"):
        _cli("export", f"--keras_model={keras_file}", f"--export_dir={root}", f"--gallery=folder:{gallery}",
             "--search_k=3", *limits[expected_version])
        assert f"SavedModel exported to {root / expected_version}" in capsys.readouterr().out
    assert cli.FLAGS["max_image_pixels"].default == image_header.MAX_IMAGE_PIXELS == 16_000_000  # restored
    assert int(tf.saved_model.load(str(root / "1")).max_image_pixels[0].numpy()) == 16_000_000
    loaded = tf.saved_model.load(str(root / "2"))
    assert int(loaded.max_image_pixels[0].numpy()) == 105 * 105
    with pytest.raises(tf.errors.InvalidArgumentError, match="106 x 105 = 11130 pixels .* limit of 11025 pixels"):
        wide = tf.io.encode_png(np.zeros((105, 106, 1), np.uint8)).numpy()
        loaded.signatures["serving_default"](images=tf.constant([wide]))
    search = loaded.signatures["search"]
    names = sorted(p.relative_to(gallery).as_posix() for p in gallery.rglob("*.png"))
    found = search(images=tf.constant([(gallery / name).read_bytes() for name in names]))
    # Each gallery image finds itself first, at distance 0, under its path relative to the folder.
    assert [row[0].decode() for row in found["ids"].numpy()] == names
    np.testing.assert_allclose(found["distances"].numpy()[:, 0], 0.0, atol=1e-5)
    assert found["ids"].shape == (6, 3)


def test_client_talks_to_rest_and_grpc_servers(served, tmp_path):
    """The client's --server path against stand-in servers that decode requests the way TF Serving does."""
    import base64 as b64
    import http.server
    import threading
    from concurrent import futures

    import grpc
    from absl import flags
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    search = tf.saved_model.load(served["v2"]).signatures["search"]

    class Rest(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # the http.server API names it so
            assert self.path == "/v1/models/pddm:predict"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["signature_name"] == "search"
            outputs = search(images=tf.constant([b64.b64decode(row["images"]["b64"]) for row in body["instances"]]))
            rows = [{name: (value.numpy()[i].astype(str) if value.dtype == tf.string else value.numpy()[i]).tolist()
                     for name, value in outputs.items()} for i in range(len(body["instances"]))]
            payload = json.dumps({"predictions": rows}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    class Grpc(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # the gRPC API names it so
            assert (request.model_spec.name, request.model_spec.signature_name) == ("pddm", "search")
            response = predict_pb2.PredictResponse()
            for name, value in search(images=tf.constant(tf.make_ndarray(request.inputs["images"]))).items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

    rest = http.server.HTTPServer(("127.0.0.1", 0), Rest)
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Grpc(), grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    folder = tmp_path / "queries"
    folder.mkdir()
    for i, path in enumerate(served["query_paths"][:4]):
        (folder / f"q{i}.png").write_bytes(pathlib.Path(path).read_bytes())
    try:
        client = _client()
        flag_values = flags.FlagValues()
        client.define_flags(flag_values)
        flag_values(["serve_client", f"--images={folder}", f"--server=127.0.0.1:{rest.server_port}",
                     f"--grpc_server=127.0.0.1:{grpc_port}", "--protocol=both", "--model_name=pddm"])
        results = client.run(flag_values)
    finally:
        rest.shutdown()
        grpc_server.stop(None)
    expected = served["out"]["2/search/ids"][:4].astype(str)
    np.testing.assert_array_equal(results["rest"]["ids"].astype(str), expected)
    np.testing.assert_array_equal(results["grpc"]["ids"].astype(str), expected)
    np.testing.assert_allclose(results["rest"]["scores"], results["grpc"]["scores"], atol=1e-6)
