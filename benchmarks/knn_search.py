"""Exact k-nearest-neighbour search at scale: our chunked searches vs faiss's exact index.

For each gallery size (--sizes, default 60,000 and 200,000) of --dim-d random normal vectors,
L2-normalised, float32 (seed 0), the first --queries rows (0 = all: a full self-search) are
searched for their k = --k nearest neighbours plus themselves, and the query's own index is
dropped, so each query gets k other neighbours. Methods, side by side in one run:

  numpy          `evaluation.nearest_neighbors()` (the default backend, "numpy"): chunked BLAS
                 matmul + thresholded running top k (1,024 queries x 4,096 gallery rows per block)
  tf             `evaluation.nearest_neighbors(backend="tf")`: chunked matmul + running top k
                 (default chunk sizes: 1,024 queries x 16,384 gallery rows per block)
  faiss_flat     faiss.IndexFlatL2 used directly (index build + search of k + 1, self dropped)
  faiss_backend  `evaluation.nearest_neighbors(backend="faiss")`: the same index through our wrapper
  tf_onednn      the tf method with TF_ENABLE_ONEDNN_OPTS=1 (TensorFlow leaves oneDNN off by default on
                 CPUs without AVX-512/AMX, such as this machine's AMD EPYC; its matmul is then Eigen's)

Each method runs in its own subprocess, which creates the data, imports TensorFlow, faiss and
pddm_tf and runs a tiny warm-up op before its baseline: reported memory is the peak RSS
(`ru_maxrss`) increase over that baseline, so the inputs (the gallery: n x dim x 4 bytes) are
not counted and methods do not contaminate each other (the peak is reset with
/proc/self/clear_refs before the baseline, so the data's own temporaries cannot hide it). Time: wall seconds of the
search call,
best of --repeats, and of --rounds: with --rounds=N the methods run in turn N times (one
subprocess each time), so that load from other jobs hits all of them alike. "vs faiss" is the
time over faiss_flat's of the same gallery size. "same rows" is the fraction of queries whose k
neighbour indices (in order) equal those of the run's first method of ours (numpy, tf, tf_onednn).

    nice -n 10 python benchmarks/knn_search.py --json=benchmarks/results/knn_search/results.json

Issue 17's figure (30,000 x 512 self-search, k = 10, the default backend vs faiss IndexFlatL2):

    python benchmarks/knn_search.py --sizes=30000 --queries=0 --methods=numpy,faiss_flat,tf --rounds=3
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["60000", "200000"], "Gallery sizes.")
flags.DEFINE_list("queries", ["0", "20000"], "Queries per gallery size (the first rows; 0 = all).")
flags.DEFINE_integer("dim", 512, "Embedding dimension.")
flags.DEFINE_integer("k", 10, "Neighbours per query, the query itself excluded.")
flags.DEFINE_list("methods", ["numpy", "tf", "faiss_flat", "faiss_backend"],
                  "Methods to run: numpy, tf, faiss_flat, faiss_backend, tf_onednn.")
flags.DEFINE_integer("repeats", 1, "Timed runs per method and round (in one process); the best is reported.")
flags.DEFINE_integer("rounds", 1, "Times every method runs, in turn, each in a fresh process; the best is reported.")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_string("worker", None, "Internal: run one method with this JSON spec and exit.")


def _data(n: int, dim: int) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no [n, dim] temporary
    return x


def _reset_peak_rss() -> None:
    """Lets the peak RSS restart from the current RSS (Linux >= 4.0), so that earlier temporaries
    (data creation, imports) cannot hide a smaller peak during the search."""
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process in MB, from /proc/self/status; ru_maxrss without it."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _drop_self(indices: np.ndarray, k: int) -> np.ndarray:
    """[n, k + 1] neighbours of queries 0..n-1 -> [n, k] without each query's own index (else the last)."""
    is_self = indices == np.arange(len(indices))[:, None]
    return np.take_along_axis(indices, np.argsort(is_self, axis=1, kind="stable")[:, :k], axis=1)


def _worker(spec_path: str) -> None:
    """One method on one gallery size, in a fresh process: time, peak RSS increase, neighbours."""
    import tensorflow as tf

    from pddm_tf.evaluation import nearest_neighbors

    spec = json.loads(pathlib.Path(spec_path).read_text())
    faiss = None
    if spec["method"].startswith("faiss"):
        import faiss
    gallery = _data(spec["n"], spec["dim"])
    n_queries, k, method = spec["n_queries"] or spec["n"], spec["k"], spec["method"]
    queries = gallery[:n_queries]  # a view: no copy
    tf.matmul(tf.ones((8, 8)), tf.ones((8, 8))).numpy()
    _reset_peak_rss()
    baseline = _rss_mb("VmRSS")

    def search() -> np.ndarray:
        if method == "faiss_flat":
            index = faiss.IndexFlatL2(gallery.shape[1])
            index.add(gallery)
            return _drop_self(index.search(queries, k + 1)[1], k)
        backend = {"numpy": "numpy", "tf": "tf", "tf_onednn": "tf", "faiss_backend": "faiss"}[method]
        if n_queries == len(gallery):  # a full self-search: the library excludes self itself
            return nearest_neighbors(gallery, k=k, backend=backend)[0]
        return _drop_self(nearest_neighbors(queries, gallery, k=k + 1, backend=backend)[0], k)

    seconds = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        indices = search()
        seconds.append(time.perf_counter() - start)
    np.save(spec["indices"], indices)
    pathlib.Path(spec["out"]).write_text(json.dumps({
        "seconds": seconds, "best_s": min(seconds), "peak_increase_mb": _rss_mb("VmHWM") - baseline,
        "baseline_mb": baseline, "faiss_version": faiss and faiss.__version__, "tf_version": tf.__version__,
        "numpy_version": np.__version__}))


OURS = ("numpy", "tf", "tf_onednn")


def _table(rows: list[dict]) -> str:
    lines = ["| gallery | queries | method | time (s) | vs faiss | GFLOP/s | peak RSS increase (MB) "
             "| same rows as ours |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = "—" if r["same_rows"] is None else f"{r['same_rows']:.5f}"
        ratio = "—" if r.get("vs_faiss") is None else f"{r['vs_faiss']:.2f}x"
        gflops = 2 * r["n_queries"] * r["n"] * r["dim"] / r["best_s"] / 1e9  # the matmul's flops
        lines.append(f"| {r['n']:,} x {r['dim']} | {r['n_queries']:,} | {r['method']} | {r['best_s']:.2f} | {ratio} | "
                     f"{gflops:.0f} | {r['peak_increase_mb']:.0f} | {same} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.worker:
        _worker(FLAGS.worker)
        return
    if len(FLAGS.queries) != len(FLAGS.sizes):
        raise app.UsageError("--queries needs one value per --sizes value")
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for n, n_queries in zip(map(int, FLAGS.sizes), map(int, FLAGS.queries)):
            n_queries = n_queries or n
            results = {}
            for round_ in range(FLAGS.rounds):
                for method in FLAGS.methods:
                    spec = {"n": n, "n_queries": n_queries, "dim": FLAGS.dim, "k": FLAGS.k, "method": method,
                            "repeats": FLAGS.repeats, "indices": f"{tmp}/{method}_{n}.npy",
                            "out": f"{tmp}/{method}_{n}.json"}
                    (pathlib.Path(tmp) / "spec.json").write_text(json.dumps(spec))
                    # The pddm_tf of this checkout, not whichever one is installed.
                    root = str(pathlib.Path(__file__).resolve().parent.parent)
                    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
                    if method == "tf_onednn":
                        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
                    subprocess.run([sys.executable, os.path.abspath(__file__), f"--worker={tmp}/spec.json"],
                                   check=True, env=env)
                    result = json.loads(pathlib.Path(spec["out"]).read_text())
                    if method in results:  # keep the best time and the largest memory of the rounds
                        previous = results[method]
                        result["seconds"] = previous["seconds"] + result["seconds"]
                        result["peak_increase_mb"] = max(previous["peak_increase_mb"], result["peak_increase_mb"])
                        result["best_s"] = min(result["seconds"])
                    results[method] = {**result, "indices": np.load(spec["indices"])}
                    print(f"round {round_ + 1}/{FLAGS.rounds}, {n:,} x {FLAGS.dim}, {method}: "
                          f"{result['seconds'][-1]:.2f} s", flush=True)
            reference = next((results[m]["indices"] for m in FLAGS.methods if m in OURS), None)
            faiss_s = results["faiss_flat"]["best_s"] if "faiss_flat" in results else None
            for method in FLAGS.methods:
                result = dict(results[method])
                indices = result.pop("indices")
                same = None if reference is None else float(np.mean(np.all(indices == reference, axis=1)))
                rows.append({"n": n, "n_queries": n_queries, "dim": FLAGS.dim, "k": FLAGS.k, "method": method,
                             "same_rows": same, "vs_faiss": faiss_s and result["best_s"] / faiss_s, **result})
    print()
    print(_table(rows))
    print(f"\nload average before: {load_before}, after: {os.getloadavg()}")
    if FLAGS.json:
        out = pathlib.Path(FLAGS.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"rows": rows, "repeats": FLAGS.repeats, "rounds": FLAGS.rounds, "load_average_before": load_before,
                   "load_average_after": os.getloadavg(), "cpu_count": os.cpu_count()}
        out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
