"""Query an exported pddm_tf model the way a production client does: TF Serving REST and gRPC requests.

For every image file in `--images` (a folder, searched recursively) it builds

* a REST request: JSON `{"signature_name": ..., "instances": [{"images": {"b64": ...}}, ...]}`,
  the bytes base64-encoded as TF Serving's REST API expects for binary inputs;
* a gRPC `PredictRequest` (`tensorflow-serving-api`) whose `images` input is a [n] DT_STRING tensor;

then runs them:

* with `--server=host:port`: sends them to a running TF Serving (`--protocol=rest`, `grpc` or
  `both`; for `both`, `--server` is the REST endpoint, usually port 8501, and `--grpc_server`
  the gRPC one, usually 8500);
* without: loads the SavedModel (`--model_dir`, a version folder or a base folder, then its
  latest version) in this process with plain `tf.saved_model.load` and feeds it the inputs
  decoded back from both requests (which must give the same outputs).

It prints each image's neighbours: with the `search` signature (model exported with a gallery),
the top-k gallery ids and scores; with `serving_default`, the nearest other images of the folder
by squared Euclidean distance between the returned embeddings.

    python examples/serve_client.py --model_dir=exports/omniglot --images=queries/
    python examples/serve_client.py --server=localhost:8501 --model_name=omniglot --images=queries/
    python examples/serve_client.py --server=localhost:8501 --grpc_server=localhost:8500 --protocol=both \
        --model_name=omniglot --images=queries/
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import sys
from typing import Any

import numpy as np
from absl import app, flags

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp")


# --------------------------------------------------------------------------- requests


def read_images(folder: str | os.PathLike, limit: int = 0) -> tuple[list[str], list[bytes]]:
    """(relative names, encoded bytes) of the image files below `folder`, sorted; `limit` > 0 keeps the first ones."""
    root = pathlib.Path(folder)
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)
    if limit > 0:
        paths = paths[:limit]
    if not paths:
        raise ValueError(f"no image files ({', '.join(_IMAGE_EXTENSIONS)}) below {str(root)!r}")
    return [p.relative_to(root).as_posix() for p in paths], [p.read_bytes() for p in paths]


def rest_request(signature_name: str, images: list[bytes]) -> dict[str, Any]:
    """The TF Serving REST predict body (row format) for an `images` [n] tf.string input."""
    return {"signature_name": signature_name,
            "instances": [{"images": {"b64": base64.b64encode(image).decode("ascii")}} for image in images]}


def rest_inputs(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """The input tensors TF Serving builds from a REST body: row ("instances") or columnar ("inputs") format.

    Values {"b64": ...} are decoded to bytes, as the server does. Returns name -> [n] array.
    """
    def decode(value: Any) -> Any:
        return base64.b64decode(value["b64"]) if isinstance(value, dict) and set(value) == {"b64"} else value

    if "instances" in body:
        rows = body["instances"]
        names = rows[0].keys() if rows and isinstance(rows[0], dict) and "b64" not in rows[0] else None
        if names is None:  # a single unnamed input
            return {"images": np.array([decode(v) for v in rows], dtype=object)}
        return {name: np.array([decode(row[name]) for row in rows], dtype=object) for name in names}
    inputs = body["inputs"]
    if not isinstance(inputs, dict):
        inputs = {"images": inputs}
    return {name: np.array([decode(v) for v in values], dtype=object) for name, values in inputs.items()}


def grpc_request(model_name: str, signature_name: str, images: list[bytes], version: int | None = None):
    """A `tensorflow_serving.apis.predict_pb2.PredictRequest` with `images` as a [n] DT_STRING tensor."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
    return request


def grpc_inputs(request) -> dict[str, np.ndarray]:
    """The input tensors of a PredictRequest, name -> numpy array (strings as bytes objects)."""
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


# --------------------------------------------------------------------------- running


def send_rest(server: str, model_name: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, np.ndarray]:
    """POSTs `body` to http://server/v1/models/<model_name>:predict; returns output name -> [n, ...] array."""
    import requests

    response = requests.post(f"http://{server}/v1/models/{model_name}:predict", data=json.dumps(body), timeout=timeout)
    response.raise_for_status()
    predictions = response.json()["predictions"]
    if predictions and isinstance(predictions[0], dict):  # several outputs: one dict per row
        return {name: np.array([row[name] for row in predictions]) for name in predictions[0]}
    return {"embeddings": np.array(predictions)}  # a single output comes back bare


def send_grpc(server: str, request, timeout: float = 60.0) -> dict[str, np.ndarray]:
    """Sends a PredictRequest to the gRPC PredictionService at `server`; returns output name -> array."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def resolve_model_dir(path: str | os.PathLike) -> str:
    """A SavedModel folder: `path` itself, or its highest integer version sub-folder."""
    root = pathlib.Path(path)
    if (root / "saved_model.pb").exists():
        return str(root)
    versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    if not versions:
        raise ValueError(f"{str(root)!r} holds neither a saved_model.pb nor version folders")
    return str(root / str(max(versions)))


def run_in_process(model_dir: str, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs one signature of the SavedModel (loaded without pddm_tf) on `inputs`; output name -> array."""
    import tensorflow as tf

    signature = tf.saved_model.load(resolve_model_dir(model_dir)).signatures[signature_name]
    outputs = signature(**{name: tf.constant(list(value) if value.dtype == object else value)
                           for name, value in inputs.items()})
    return {name: value.numpy() for name, value in outputs.items()}


def neighbours_table(names: list[str], outputs: dict[str, np.ndarray], k: int = 5) -> str:
    """A text table of each query's neighbours: `search` outputs (ids, scores), else nearest other queries."""
    lines = [f"{'query':<32} | neighbours (id: score)"]
    lines.append("-" * 33 + "+" + "-" * 60)
    if "ids" in outputs:
        for name, ids, scores in zip(names, outputs["ids"], outputs["scores"]):
            cells = [f"{(i.decode() if isinstance(i, bytes) else str(i))}: {s:.4f}" for i, s in zip(ids, scores)]
            lines.append(f"{name:<32} | {', '.join(cells[:k])}")
        return "\n".join(lines)
    embeddings = np.asarray(outputs["embeddings"], dtype=np.float64)
    distances = np.sum((embeddings[:, None] - embeddings[None]) ** 2, axis=-1)
    np.fill_diagonal(distances, np.inf)  # a query is not its own neighbour
    for row, name in enumerate(names):
        order = np.argsort(distances[row], kind="stable")[: min(k, len(names) - 1)]
        lines.append(f"{name:<32} | {', '.join(f'{names[j]}: {-distances[row, j]:.4f}' for j in order)}")
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command-line flags (in a function, so importing this module defines none)."""
    flags.DEFINE_string("images", None, "Folder of query images (searched recursively).", flag_values=flag_values)
    flags.DEFINE_integer("limit", 0, "Use only the first N images (0 = all).", flag_values=flag_values)
    flags.DEFINE_string("model_dir", None, "In-process: a SavedModel version folder or TF Serving base folder.",
                        flag_values=flag_values)
    flags.DEFINE_string("server", None, "host:port of a running TF Serving (REST, or gRPC with --protocol=grpc).",
                        flag_values=flag_values)
    flags.DEFINE_string("grpc_server", None, "host:port of TF Serving's gRPC endpoint for --protocol=both.",
                        flag_values=flag_values)
    flags.DEFINE_enum("protocol", "rest", ["rest", "grpc", "both"], "How to talk to --server.",
                      flag_values=flag_values)
    flags.DEFINE_string("model_name", "pddm", "The model name TF Serving serves (--model_name of the server).",
                        flag_values=flag_values)
    flags.DEFINE_integer("model_version", None, "Ask for this version (default: the server's latest).",
                         flag_values=flag_values)
    flags.DEFINE_string("signature", "search", "search (model exported with a gallery) or serving_default.",
                        flag_values=flag_values)
    flags.DEFINE_integer("top", 5, "Neighbours printed per image.", flag_values=flag_values)
    flags.DEFINE_string("save_requests", None, "Also write the REST body (.json) and gRPC request (.pb) with this "
                        "path prefix.", flag_values=flag_values)


def run(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, dict[str, np.ndarray]]:
    """Builds both requests and runs them per the flags; returns protocol -> outputs."""
    f = flag_values
    if not f.images:
        raise app.UsageError("--images is required")
    names, images = read_images(f.images, f.limit)
    body = rest_request(f.signature, images)
    request = grpc_request(f.model_name, f.signature, images, f.model_version)
    if f.save_requests:
        pathlib.Path(f.save_requests + ".json").write_text(json.dumps(body))
        pathlib.Path(f.save_requests + ".pb").write_bytes(request.SerializeToString())
    results: dict[str, dict[str, np.ndarray]] = {}
    if f.server:
        if f.protocol in ("rest", "both"):
            results["rest"] = send_rest(f.server, f.model_name, body)
        if f.protocol == "grpc":
            results["grpc"] = send_grpc(f.server, request)
        if f.protocol == "both":
            if not f.grpc_server:
                raise app.UsageError("--protocol=both needs --grpc_server")
            results["grpc"] = send_grpc(f.grpc_server, request)
    else:
        if not f.model_dir:
            raise app.UsageError("give --server (a running TF Serving) or --model_dir (run in-process)")
        # The inputs each request carries, decoded as the server would: both must give the same answer.
        results["rest (in-process)"] = run_in_process(f.model_dir, f.signature, rest_inputs(body))
        results["grpc (in-process)"] = run_in_process(f.model_dir, f.signature, grpc_inputs(request))
    for protocol, outputs in results.items():
        print(f"\n{protocol}, signature {f.signature}, {len(names)} images\n{neighbours_table(names, outputs, f.top)}")
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    run()


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    sys.exit(app.run(main))
