"""pddm_tf against PyTorch + pytorch-metric-learning: ms per train step, same network, batch and loss.

The network is `benchmarks/train_step.py`'s: `small_convnet` (four Conv3x3(64) -> BatchNorm -> ReLU
-> MaxPool2 blocks, global average pooling) and a Linear projection to d, L2-normalised, on one
fixed random batch of P x K images (32 x 32 x 1 by default). For each configuration and loss:
  * pddm_tf: `methods.build_model(LOSS, backbone("small_convnet"), d)`, Adam(1e-4), timed
    `train_on_batch` (as train_step.py times it);
  * PyTorch: the same network rebuilt in PyTorch with the Keras model's initial weights, the same
    batch, Adam(1e-4) and pytorch-metric-learning's miner and loss for the method
    (`peer_pytorch_worker.py` says which), in two worker processes: one with PyTorch's default
    threads, one started with OMP_WAIT_POLICY=PASSIVE (PyTorch's OpenMP threads otherwise spin
    while waiting, which costs a lot on a loaded machine; the variable must be set before torch is
    imported, hence the processes).
The three rows of every (configuration, loss) take turns within each round, the order rotating
from round to round, with a short pause between rows so that threads spinning after one row have
gone to sleep before the next starts; each row's steps are timed inside its own process. Reported:
median (min-max) ms per step over --rounds rounds of --steps steps, and pddm_tf's median over each
PyTorch row's. Before timing, the first step's loss of both frameworks is printed side by side: the
same weights on the same batch give the same loss when network and loss are the same.

It needs torch and pytorch-metric-learning importable by --python (default: this interpreter) and
exits 0 with a message saying so when they are not; they are never dependencies of pddm_tf.

  nice -n 5 python benchmarks/peer_pytorch.py --configs=16x4:64,64x4:128 --rounds=7
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pddm_tf import atomic, backbone  # noqa: E402
from pddm_tf.methods import build_model, method_options  # noqa: E402

FLAGS = flags.FLAGS

#: What the PyTorch side imports; missing ones make the script skip.
PEER_MODULES = ("torch", "pytorch_metric_learning")
#: The two PyTorch workers: row label -> environment variables added to this process's.
TORCH_SETTINGS = {"PyTorch": {}, "PyTorch, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
WORKER = pathlib.Path(__file__).with_name("peer_pytorch_worker.py")


def missing_modules(python: str, modules: Sequence[str] = PEER_MODULES) -> list[str]:
    """The `modules` that `python` cannot import (each tried in a fresh process, so this process
    never imports torch)."""
    return [name for name in modules
            if subprocess.run([python, "-c", f"import {name}"], capture_output=True).returncode != 0]


def parse_config(config: str) -> tuple[int, int, int]:
    """"PxK:d" -> (P, K, d)."""
    batch, dim = config.split(":")
    classes, per_class = batch.split("x")
    return int(classes), int(per_class), int(dim)


def fixed_batch(classes: int, per_class: int, image_size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's batch, as train_step.py makes it: uniform images [P K, s, s, c] float32 and
    labels [P K] int32, class by class."""
    rng = np.random.default_rng(0)
    images = rng.random((classes * per_class, image_size, image_size, channels), np.float32)
    return images, np.repeat(np.arange(classes), per_class).astype(np.int32)


def pddm_tf_model(method: str, classes: int, dim: int, image_size: int, channels: int) -> keras.Model:
    """The pddm_tf side of one row, as train_step.py builds it: seeded, built, compiled with Adam(1e-4)."""
    keras.utils.set_random_seed(0)
    network = backbone("small_convnet", image_size, channels, weights=None)
    model = build_model(method, network, dim, **method_options(method, num_classes=classes))
    model.build((None, image_size, image_size, channels))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=False)
    return model


def torch_layout_weights(model: keras.Model, depth: int = 4) -> dict[str, np.ndarray]:
    """The Keras model's backbone and projection weights in PyTorch's layout, keyed by the state_dict
    names of `peer_pytorch_worker.SmallConvnet`: conv kernels [3, 3, in, out] -> [out, in, 3, 3],
    Dense kernel [k, d] -> [d, k]; BatchNorm's gamma, beta and moving statistics as they are."""
    weights: dict[str, np.ndarray] = {}
    for block in range(depth):
        conv, norm = model.backbone.get_layer(f"conv{block}"), model.backbone.get_layer(f"bn{block}")
        weights[f"features.{4 * block}.weight"] = np.transpose(conv.kernel.numpy(), (3, 2, 0, 1))
        for key, variable in (("weight", norm.gamma), ("bias", norm.beta), ("running_mean", norm.moving_mean),
                              ("running_var", norm.moving_variance)):
            weights[f"features.{4 * block + 1}.{key}"] = variable.numpy()
    (projection,) = model.head._projections
    weights["projection.weight"] = projection.kernel.numpy().T
    weights["projection.bias"] = projection.bias.numpy()
    return {key: np.ascontiguousarray(value, np.float32) for key, value in weights.items()}


def pddm_tf_step(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> Callable[[], float]:
    """One pddm_tf train step on the fixed batch; returns the step's loss (computed before the update)."""
    x, y = tf.constant(images), tf.constant(labels)
    return lambda: float(model.train_on_batch(x, y, return_dict=True)["loss"])


class TorchWorker:
    """A `peer_pytorch_worker.py` process started with `env` added to this process's environment."""

    def __init__(self, python: str, env: dict[str, str], npz: str, rows: list[dict[str, Any]]) -> None:
        self.process = subprocess.Popen([python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env={**os.environ, **env})
        self.ready = self._ask({"npz": npz, "rows": rows, "warmup_steps": FLAGS.warmup_steps})

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch worker exited with code {self.process.wait()}")
        return json.loads(line)

    def run(self, row: str, steps: int) -> tuple[float, float]:
        reply = self._ask({"row": row, "steps": steps})
        return reply["ms"], reply["loss"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"quit": True}) + "\n")
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _time_tf(step: Callable[[], float], steps: int) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    return (time.perf_counter() - start) / steps * 1000, loss


Runner = Callable[[int], tuple[float, float]]  # steps -> (ms per step, last loss)


def _interleaved(rows: dict[tuple[str, str], Runner]) -> dict[tuple[str, str], list[float]]:
    """ms per step of every row, one value per round; rows take turns, the order rotating by round."""
    names = list(rows)
    times: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    for round_ in range(FLAGS.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(FLAGS.pause)
            ms, loss = rows[name](FLAGS.steps)
            if not np.isfinite(loss):
                raise RuntimeError(f"{name}: non-finite loss")
            times[name].append(ms)
    return times


def _table(times: dict[tuple[str, str], list[float]], first: dict[tuple[str, str], float]) -> str:
    frameworks = ["pddm_tf", *TORCH_SETTINGS]
    lines = ["| batch, d | loss | first-step loss (pddm_tf / PyTorch) | "
             + " | ".join(f"{name} ms (min-max)" for name in frameworks)
             + " | pddm_tf / PyTorch | pddm_tf / PyTorch PASSIVE |", "|" + "---|" * (5 + len(frameworks))]
    for config in FLAGS.configs:
        classes, per_class, dim = parse_config(config)
        for loss in FLAGS.losses:
            key = f"{config}/{loss}"
            med = {name: statistics.median(times[(key, name)]) for name in frameworks}
            cells = [f"{med[name]:.1f} ({min(times[(key, name)]):.1f}-{max(times[(key, name)]):.1f})"
                     for name in frameworks]
            torch_default, torch_passive = (med[name] for name in TORCH_SETTINGS)
            lines.append(f"| {classes} x {per_class}, d = {dim} | {loss} | {first[(key, 'pddm_tf')]:.5f} / "
                         f"{first[(key, 'PyTorch')]:.5f} | " + " | ".join(cells)
                         + f" | {med['pddm_tf'] / torch_default:.2f} | {med['pddm_tf'] / torch_passive:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    missing = missing_modules(FLAGS.python)
    if missing:
        print(f"peer_pytorch: skipped: {', '.join(missing)} not importable by {FLAGS.python}. Install torch and "
              "pytorch-metric-learning in a separate environment (never a pddm_tf dependency) and run the script "
              "with its interpreter or pass --python=...")
        return
    print(f"small_convnet {FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}; {FLAGS.rounds} rounds of "
          f"{FLAGS.steps} steps; {platform.processor() or platform.machine()}, TF {tf.__version__}, "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}; load average at start "
          f"{os.getloadavg()}")
    runners: dict[tuple[str, str], Runner] = {}
    first: dict[tuple[str, str], float] = {}
    arrays: dict[str, np.ndarray] = {}
    worker_rows = []
    for config in FLAGS.configs:
        classes, per_class, dim = parse_config(config)
        images, labels = fixed_batch(classes, per_class, FLAGS.image_size, FLAGS.channels)
        for loss in FLAGS.losses:
            key = f"{config}/{loss}"
            model = pddm_tf_model(loss, classes, dim, FLAGS.image_size, FLAGS.channels)
            arrays.update({f"{key}/images": images, f"{key}/labels": labels,
                           **{f"{key}/weights/{name}": value for name, value in torch_layout_weights(model).items()}})
            step = pddm_tf_step(model, images, labels)
            first[(key, "pddm_tf")] = step()
            for _ in range(FLAGS.warmup_steps):
                step()
            runners[(key, "pddm_tf")] = functools.partial(_time_tf, step)
            worker_rows.append({"name": key, "loss": loss, "dim": dim})
    with tempfile.TemporaryDirectory() as folder:
        npz = os.path.join(folder, "batches.npz")
        np.savez(npz, **arrays)  # type: ignore[arg-type]  # numpy's stub reads the dict as allow_pickle
        workers = {label: TorchWorker(FLAGS.python, env, npz, worker_rows) for label, env in TORCH_SETTINGS.items()}
    ready = workers["PyTorch"].ready
    print(f"PyTorch {ready['torch']}, pytorch-metric-learning {ready['pml']}, torch threads {ready['threads']}")
    for row in worker_rows:
        for label, worker in workers.items():
            first[(row["name"], label)] = worker.ready["first_loss"][row["name"]]
            runners[(row["name"], label)] = functools.partial(worker.run, row["name"])
        print(f"{row['name']}: first-step loss pddm_tf {first[(row['name'], 'pddm_tf')]:.6f}, PyTorch "
              f"{first[(row['name'], 'PyTorch')]:.6f}")
    # Rows of one (configuration, loss) next to each other, so that they take turns closely.
    ordered = {(row["name"], label): runners[(row["name"], label)] for row in worker_rows
               for label in ("pddm_tf", *TORCH_SETTINGS)}
    try:
        times = _interleaved(ordered)
    finally:
        for worker in workers.values():
            worker.close()
    table = _table(times, first)
    print(f"\nload average at the end {os.getloadavg()}\n\n{table}")
    if FLAGS.json:
        atomic.write_json(FLAGS.json, {"flags": {name: FLAGS[name].value for name in (
            "configs", "losses", "image_size", "channels", "steps", "rounds", "pause")},
            "torch": ready["torch"], "pml": ready["pml"], "torch_threads": ready["threads"],
            "first_loss": {f"{k} | {n}": v for (k, n), v in first.items()},
            "ms_per_step": {f"{k} | {n}": v for (k, n), v in times.items()}, "table": table}, indent=2)


def _define_flags() -> None:
    """The script's flags, defined when it runs (tests import this module beside the CLI, whose
    --image_size and --json would clash)."""
    flags.DEFINE_list("configs", ["16x4:64", "64x4:128"], "Batch configurations PxK:d.")
    flags.DEFINE_list("losses", ["triplet_batchhard", "multi_similarity"], "pddm_tf methods, each with its PML twin.")
    flags.DEFINE_integer("image_size", 32, "Input side.")
    flags.DEFINE_integer("channels", 1, "Input channels.")
    flags.DEFINE_integer("warmup_steps", 3, "Untimed steps per row before the rounds (after the first step).")
    flags.DEFINE_integer("steps", 10, "Timed steps per round and row.")
    flags.DEFINE_integer("rounds", 7, "Rounds; the median over rounds is reported.")
    flags.DEFINE_float("pause", 0.3, "Seconds of idle time between two rows.")
    flags.DEFINE_string("python", sys.executable, "Interpreter that runs the PyTorch workers.")
    flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
