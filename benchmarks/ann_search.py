"""Approximate vs exact search in `pddm_tf.evaluation.Index`: recall@10, queries/s, build time, memory.

Data sets (float32, L2-normalised rows):

  synthetic_<n>  n gallery vectors of --dim from a mixture of --clusters Gaussians on the unit sphere
                 (centre uniform on the sphere + N(0, --spread^2) per coordinate, renormalised; seed 0),
                 like the class clusters of trained embeddings; --queries fresh draws of the same mixture.
  omniglot       the embedded Omniglot images (4,840) embedded by --omniglot_model (an exported SavedModel)
                 or, without it, by a freshly initialised small_convnet (d = --dim); the last --omniglot_queries
                 images (shuffled, seed 0) are the queries, the rest the gallery.

Every configuration runs in its own subprocess (`--worker`), which loads the data, resets its peak RSS,
builds the `Index` (timed: "build s") and searches all queries in one call, best of --repeats ("queries/s").
"recall@10" is the mean fraction of each query's exact 10 nearest rows (the "numpy" backend, computed once in
the parent) that the configuration returned. "memory MB" is the peak RSS increase of the worker over its
baseline with the gallery loaded: the structure (and transient build memory) beyond the embeddings, which
every backend keeps. faiss and BLAS run with --threads threads (OMP_NUM_THREADS, faiss.omp_set_num_threads).

    nice -n 10 python benchmarks/ann_search.py --out=benchmarks/results/ann_search.md
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
_REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_list("sizes", ["100000", "1000000"], "Synthetic gallery sizes.")
flags.DEFINE_integer("dim", 128, "Embedding dimension.")
flags.DEFINE_integer("clusters", 1000, "Synthetic mixture components.")
flags.DEFINE_float("spread", 0.1, "Per-coordinate standard deviation around a component's centre.")
flags.DEFINE_integer("queries", 1000, "Synthetic queries.")
flags.DEFINE_bool("omniglot", True, "Also the embedded Omniglot data.")
flags.DEFINE_string("omniglot_model", None, "An exported SavedModel (version or base folder) to embed Omniglot "
                    "with; default: a fresh small_convnet.")
flags.DEFINE_integer("omniglot_queries", 500, "Omniglot images used as queries.")
flags.DEFINE_integer("k", 10, "Neighbours per query (recall@k).")
flags.DEFINE_integer("threads", 2, "Threads of faiss and BLAS.")
flags.DEFINE_integer("repeats", 3, "Timed searches per configuration; the best is reported.")
flags.DEFINE_list("configs", ["numpy", "faiss", "hnsw:ef_search=16/32/64/128", "ivf_pq:nprobe=8/16/32/64"],
                  "Configurations: an Index backend, optionally ':option=v1/v2/...' (one build, one search per "
                  "value of a search-time option) and ';option=value' build options, e.g. "
                  "'hnsw;M=16;ef_construction=40:ef_search=32/64'.")
flags.DEFINE_string("out", None, "Write the markdown table here.")
flags.DEFINE_string("json", None, "Write the results here.")
flags.DEFINE_string("worker", None, "Internal: run one configuration with this JSON spec and exit.")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int, queries: int, dim: int, clusters: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """(gallery [n, dim], queries [queries, dim]) from the mixture of Gaussians on the sphere (seed 0)."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(clusters, dim)))

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), np.float32)
        for start in range(0, count, 100_000):  # bounded float64 temporaries
            m = min(100_000, count - start)
            out[start:start + m] = _unit(centres[rng.integers(0, clusters, m)] + spread * rng.normal(size=(m, dim)))
        return out

    return draw(n), draw(queries)


def omniglot(model_dir: str | None, queries: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(gallery, queries) of the embedded Omniglot images' embeddings (see the module docstring)."""
    import keras
    import tensorflow as tf

    import pddm_tf
    from pddm_tf import data, evaluation

    split = data.load_dataset("omniglot", test_fraction=0.0)
    files = split.train
    if model_dir:
        from pddm_tf.export import load_saved_model, saved_model_geometry

        folder, signatures = load_saved_model(model_dir)
        embed = signatures["embed_pixels"]
        size, channels = saved_model_geometry(folder)
        dataset = data.evaluation_dataset(files, size, channels, 256)
        embeddings = tf.concat([embed(pixels=x)["embeddings"] for x, _ in dataset], axis=0).numpy()
    else:
        keras.utils.set_random_seed(0)
        model = pddm_tf.MetricLossModel(pddm_tf.small_convnet(28, 1), pddm_tf.ContrastiveLoss(), embedding_dim=dim)
        embeddings, _ = evaluation.embed_dataset(model, data.evaluation_dataset(files, 28, 1, 256))
    embeddings = _unit(np.asarray(embeddings, np.float64))
    order = np.random.default_rng(0).permutation(len(embeddings))
    return embeddings[order[queries:]], embeddings[order[:queries]]


def _peak_reset() -> None:
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _parse(config: str) -> tuple[str, dict[str, int], str | None, list[int]]:
    """'hnsw;M=16:ef_search=32/64' -> ("hnsw", {"M": 16}, "ef_search", [32, 64])."""
    head, _, sweep = config.partition(":")
    backend, *build = head.split(";")
    options = {key: int(value) for key, value in (item.split("=") for item in build)}
    if not sweep:
        return backend, options, None, [0]
    name, values = sweep.split("=")
    return backend, options, name, [int(v) for v in values.split("/")]


def worker(spec: dict) -> None:
    import faiss

    faiss.omp_set_num_threads(spec["threads"])
    from pddm_tf.evaluation.index import Index

    gallery, queries = np.load(spec["gallery"]), np.load(spec["queries"])
    truth = np.load(spec["truth"])
    backend, options, sweep, values = _parse(spec["config"])
    _peak_reset()
    baseline = _peak_mb()
    rows = []
    index = Index(backend=backend, backend_options=options)
    start = time.perf_counter()
    index.add(gallery)
    if backend in ("hnsw", "ivf_pq"):
        index._built(backend, index.backend_options)  # build now, so that its time is the build's
    build_s = time.perf_counter() - start
    for value in values:
        if sweep:
            index.backend_options[sweep] = value
        seconds = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            found = index.search(queries, k=spec["k"]).indices
            seconds.append(time.perf_counter() - start)
        recall = np.mean([len(set(f) & set(t)) for f, t in zip(found, truth)]) / spec["k"]
        rows.append({"config": backend + "".join(f" {k}={v}" for k, v in index.backend_options.items()
                                                 if k in options or k == sweep),
                     "backend": backend, "options": dict(index.backend_options), "recall": float(recall),
                     "qps": len(queries) / min(seconds), "build_s": build_s, "memory_mb": _peak_mb() - baseline})
    print(json.dumps(rows))


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.worker:
        worker(json.loads(FLAGS.worker))
        return
    from pddm_tf.evaluation.index import Index

    datasets = [(f"synthetic_{int(n):,}", lambda n=int(n): synthetic(n, FLAGS.queries, FLAGS.dim, FLAGS.clusters,
                                                                         FLAGS.spread)) for n in FLAGS.sizes]
    if FLAGS.omniglot:
        datasets.insert(0, ("omniglot", lambda: omniglot(FLAGS.omniglot_model, FLAGS.omniglot_queries, FLAGS.dim)))
    env = dict(os.environ, OMP_NUM_THREADS=str(FLAGS.threads), OPENBLAS_NUM_THREADS=str(FLAGS.threads),
               MKL_NUM_THREADS=str(FLAGS.threads), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in datasets:
            gallery, queries = make()
            truth = Index()
            truth.add(gallery)
            paths = {key: os.path.join(tmp, f"{key}.npy") for key in ("gallery", "queries", "truth")}
            np.save(paths["gallery"], gallery)
            np.save(paths["queries"], queries)
            np.save(paths["truth"], truth.search(queries, k=FLAGS.k).indices)
            del truth
            for config in FLAGS.configs:
                spec = dict(paths, config=config, threads=FLAGS.threads, repeats=FLAGS.repeats, k=FLAGS.k)
                proc = subprocess.run([sys.executable, __file__, f"--worker={json.dumps(spec)}"], env=env,
                                      capture_output=True, text=True, check=False)
                if proc.returncode:
                    raise SystemExit(f"{name} {config} failed:\n{proc.stderr[-3000:]}")
                for row in json.loads(proc.stdout.strip().splitlines()[-1]):
                    row.update(dataset=name, rows=len(gallery), queries=len(queries))
                    results.append(row)
                    print(_line(row), flush=True)
    table = _table(results)
    print(table)
    if FLAGS.out:
        pathlib.Path(FLAGS.out).write_text(table)
    if FLAGS.json:
        pathlib.Path(FLAGS.json).write_text(json.dumps(results, indent=1))


def _line(row: dict) -> str:
    exact = row.get("exact_qps")
    speedup = f"{row['qps'] / exact:.1f}x" if exact else ""
    return (f"| {row['dataset']} | {row['config']} | {row['recall']:.3f} | {row['qps']:,.0f} | {speedup} | "
            f"{row['build_s']:.1f} | {row['memory_mb']:,.0f} |")


def _table(results: list[dict]) -> str:
    for row in results:
        exact = [r["qps"] for r in results if r["dataset"] == row["dataset"] and r["backend"] == "numpy"]
        row["exact_qps"] = exact[0] if exact else None
    header = ("| data | backend and options | recall@10 | queries/s | vs exact | build s | memory MB |\n"
              "|---|---|---|---|---|---|---|\n")
    command = "nice -n 10 python benchmarks/ann_search.py " + " ".join(sys.argv[1:])
    return (f"{header}{chr(10).join(_line(r) for r in results)}\n\n"
            f"Command: `{command}`; {FLAGS.threads} threads, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs.\n")


if __name__ == "__main__":
    app.run(main)
