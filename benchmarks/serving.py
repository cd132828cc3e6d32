"""Serving latency and throughput: the exported SavedModel in a fresh process vs `model.predict`.

One run builds the model of `pddm-tf train --method=pddm_quadruplet` (small_convnet 32 x 32 x 1,
width 64, d = 64, PDDM unit; untrained unless `--keras_model` is given: the cost does not depend on
the weights), exports it with a `search` gallery (the held-out embedded Omniglot images, 2,420) and times, on the same
images at batch sizes 1 and 64:

* in a fresh Python process that loads the SavedModel with plain `tf.saved_model.load` (no
  pddm_tf): `embed_pixels` (decoded pixels), `serving_default` (PNG bytes, decoding included) and
  `search` (PNG bytes -> top-10 gallery ids, exact search over 2,420 items);
* in this process: `model.predict` and `model.predict_on_batch` on the decoded pixels.

Each measurement: `--warmup` untimed calls, then `--repeats` timed calls; the table gives the median
latency per call, its 90th percentile and images/s = batch / median.

    nice -n 10 python benchmarks/serving.py --json=benchmarks/results/serving/results.json
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("keras_model", None, "A .keras model to serve (default: the untrained default model).")
flags.DEFINE_integer("repeats", 50, "Timed calls per measurement.")
flags.DEFINE_integer("warmup", 5, "Untimed calls first (tracing, allocation).")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_string("worker", None, "Internal: run the SavedModel side with this JSON spec and exit.")

BATCHES = (1, 64)


def _time(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    """Median and 90th-percentile seconds of `fn()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return {"median_s": float(np.median(seconds)), "p90_s": float(np.percentile(seconds, 90))}


def _worker(spec_path: str) -> None:
    """The fresh-process side: load the SavedModel without pddm_tf, time its signatures, write JSON."""
    import tensorflow as tf

    spec = json.loads(pathlib.Path(spec_path).read_text())
    start = time.perf_counter()
    signatures = tf.saved_model.load(spec["model_dir"]).signatures
    load_s = time.perf_counter() - start
    pixels = np.load(spec["pixels"])
    encoded = [pathlib.Path(p).read_bytes() for p in spec["paths"]]
    results = {"load_s": load_s}
    for batch in BATCHES:
        x = tf.constant(pixels[:batch])
        images = tf.constant(encoded[:batch])
        calls = {
            "embed_pixels": lambda x=x: signatures["embed_pixels"](pixels=x)["embeddings"].numpy(),
            "serving_default": lambda images=images: signatures["serving_default"](images=images)[
                "embeddings"].numpy(),
            "search": lambda images=images: signatures["search"](images=images)["ids"].numpy(),
        }
        for name, call in calls.items():
            results[f"{name}/{batch}"] = _time(call, spec["warmup"], spec["repeats"])
    assert not any(m.startswith("pddm_tf") for m in sys.modules)
    pathlib.Path(spec["out"]).write_text(json.dumps(results))


def _table(rows: list[tuple[str, int, dict[str, float]]]) -> str:
    lines = ["| how | batch | median latency (ms) | p90 (ms) | images/s |", "|---|---|---|---|---|"]
    for name, batch, r in rows:
        lines.append(f"| {name} | {batch} | {1e3 * r['median_s']:.2f} | {1e3 * r['p90_s']:.2f} | "
                     f"{batch / r['median_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.worker:
        _worker(FLAGS.worker)
        return
    import keras

    from pddm_tf import PDDM, PDDMModel, data, small_convnet
    from pddm_tf.export import embed_gallery, export_saved_model, image_geometry, load_keras_model

    if FLAGS.keras_model:
        model = load_keras_model(FLAGS.keras_model)
    else:
        keras.utils.set_random_seed(0)
        model = PDDMModel(small_convnet(32, 1, width=64), embedding_dim=64, pddm=PDDM(name="pddm"))
        model.build((None, 32, 32, 1))
    size, channels = image_geometry(model)
    test = data.load_omniglot(test_fraction=0.5, seed=0).test
    paths = test.paths[np.random.default_rng(0).choice(len(test), size=max(BATCHES), replace=False)]
    files = data.ImageFiles(paths, np.zeros(len(paths), np.int32), ("q",), np.zeros(len(paths), np.int32))
    pixels = np.concatenate([x.numpy() for x, _ in data.evaluation_dataset(files, size, channels, 64)])
    gallery = embed_gallery(model, test.paths, [os.path.basename(p) for p in test.paths], size, channels)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = export_saved_model(model, pathlib.Path(tmp) / "serving", size, channels, gallery=gallery,
                                       search_k=10)
        np.save(pathlib.Path(tmp) / "pixels.npy", pixels)
        spec = {"model_dir": model_dir, "pixels": str(pathlib.Path(tmp) / "pixels.npy"), "paths": list(paths),
                "out": str(pathlib.Path(tmp) / "worker.json"), "warmup": FLAGS.warmup, "repeats": FLAGS.repeats}
        (pathlib.Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
        subprocess.run([sys.executable, os.path.abspath(__file__), f"--worker={pathlib.Path(tmp) / 'spec.json'}"],
                       check=True, env=env, cwd=tmp)
        served = json.loads((pathlib.Path(tmp) / "worker.json").read_text())
    keras_results = {}
    for batch in BATCHES:
        x = pixels[:batch]
        keras_results[f"model.predict/{batch}"] = _time(lambda x=x: model.predict(x, verbose=0), FLAGS.warmup,
                                                        FLAGS.repeats)
        keras_results[f"model.predict_on_batch/{batch}"] = _time(lambda x=x: model.predict_on_batch(x), FLAGS.warmup,
                                                                 FLAGS.repeats)
    rows = []
    for batch in BATCHES:
        for name in ("embed_pixels", "serving_default", "search"):
            rows.append((f"SavedModel `{name}` (fresh process)", batch, served[f"{name}/{batch}"]))
        for name in ("model.predict", "model.predict_on_batch"):
            rows.append((f"Keras `{name}`", batch, keras_results[f"{name}/{batch}"]))
    print(f"\nSavedModel load in the fresh process: {served['load_s']:.2f} s; gallery {len(gallery.ids)} items\n")
    print(_table(rows))
    if FLAGS.json:
        from pddm_tf import atomic

        payload = {"saved_model": served, "keras": keras_results, "gallery_size": len(gallery.ids),
                   "repeats": FLAGS.repeats, "warmup": FLAGS.warmup, "load_average": os.getloadavg()}
        atomic.write_json(FLAGS.json, payload, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
