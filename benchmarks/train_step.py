"""Train-step time of PDDM quadruplet training against batch-hard triplet, side by side in one run.

For each batch configuration (P x K images, embedding size d) the script builds the models with
the same backbone (small_convnet by default, 32 x 32 x 1) and times `train_on_batch` on one fixed
random batch (the input pipeline is left out). The rows take turns within each round, so load from
other jobs affects them alike. Reported per row: median (min, max) ms per step over --rounds rounds
of --steps steps, and the ratio of medians to the first row of the configuration (batch-hard).

Beside the full steps, the PDDM rows are broken down into the parts of METHODS.md section 2 that
batch-hard training does not have, each timed alone in its own `tf.function` on the same batch:
  * `all_pairs`: the all-pairs PDDM scores of the batch's embeddings (mining input, no gradient);
  * `mining`:   all_pairs + quadruplet mining (`models.mine_with_pddm`);
  * `mining scores`: the same scores as `PDDMModel.mine` computes them (`models.pddm._mining_scores`,
    fewer passes over the pairs' activations) when the unit does not normalise its inputs;
  * `dense_all_pairs`: the all-pairs scores as the library computed them before (every ordered
    pair through an [m, m, d] difference tensor), for comparison;
  * `all_pairs (XLA)`: all_pairs compiled by XLA, as `compile(jit_compile=True)` runs it;
  * `all_pairs products`: only the matrix products of all_pairs, on random inputs of their shapes
    ([P, d] x [d, h] and twice [P, h] x [h, h'] for the P = m (m + 1) / 2 pairs i <= j, plus the
    small ones): the arithmetic that exact scores of every pair cannot avoid, at this machine's
    matrix-product speed. Reference step + products, over the reference step, is printed as the
    lowest step ratio an exact PDDM-mined step can reach (`floor ratio`);
  * `loss`: the double-header loss of the mined quadruplets and its gradient (embeddings and unit),
    as the step computes it (`models.pddm_quadruplet_terms`, each distinct pair scored once), and
    `loss, 3q pairs` the same with all 3q pairs scored, as the library did before.
A row "METHOD+xla" is METHOD compiled with `jit_compile=True` (XLA for the whole step where it
compiles, the all-pairs mining scores for the PDDM methods).

With --profile, each method's step is then traced by TensorFlow's profiler for --profile_steps
steps, and the trace (the XPlane the profiler writes) is summed per step: the kernels the executor
ran (count, and the time inside them, summed over threads) by where they come from (the backbone
and head, the optimizer update, gradient sums that Grappler rewrote into accumulations, the rest:
loss and mining), and by op type. Beside it, the executor's cost per kernel, from a chain of 2,000
dependent tiny ops (`Sin` on 64 floats) in one `tf.function`, timed like the steps: what each extra
kernel costs when its arithmetic is negligible.

  nice -n 19 python benchmarks/train_step.py --configs=16x4:64,64x4:128
"""

from __future__ import annotations

import collections
import glob
import os
import pathlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pddm_tf import atomic, backbone  # noqa: E402
from pddm_tf.distances import EPSILON, l2_normalize, safe_norm  # noqa: E402
from pddm_tf.methods import build_model, method_options  # noqa: E402
from pddm_tf.miners import quadruplet_tuples  # noqa: E402
from pddm_tf.models import mine_with_pddm, pddm_quadruplet_terms  # noqa: E402
from pddm_tf.models.pddm import _mining_scores  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["16x4:64", "64x4:128"], "Batch configurations PxK:d.")
flags.DEFINE_list("methods", ["triplet_batchhard", "pddm_quadruplet"],
                  "Methods to time; the first is each configuration's reference (ratio 1).")
flags.DEFINE_string("backbone", "small_convnet", "Backbone name.")
flags.DEFINE_integer("image_size", 32, "Input side.")
flags.DEFINE_integer("channels", 1, "Input channels.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps per row before the rounds (tracing included).")
flags.DEFINE_integer("steps", 10, "Timed steps per round and row.")
flags.DEFINE_integer("rounds", 5, "Rounds; the median over rounds is reported.")
flags.DEFINE_bool("breakdown", True, "Also time the PDDM parts (all-pairs scores, mining) alone.")
flags.DEFINE_bool("profile", False, "Also profile each method's step (see the module docstring).")
flags.DEFINE_integer("profile_steps", 20, "Steps traced per method by --profile.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def _dense_all_pair_scores(layer, f: tf.Tensor) -> tf.Tensor:
    """The former all-pairs mode: every ordered pair, through an [m, m, d] difference tensor."""
    f = l2_normalize(f)
    u = tf.abs(f[:, None, :] - f[None, :, :])
    distance = safe_norm(u, keepdims=False)  # the unit's Euclidean prior reads it
    if layer.normalize_inputs:
        u = l2_normalize(u)
    u_h = tf.nn.relu(tf.einsum("ijd,dh->ijh", u, layer.u_kernel) + layer.u_bias)
    proj = tf.matmul(f, layer.v_kernel)
    v_lin = 0.5 * (proj[:, None, :] + proj[None, :, :])
    if layer.normalize_inputs:
        sq = tf.reduce_sum(tf.square(f), axis=1)
        v_sq_norm = 0.25 * (sq[:, None] + sq[None, :] + 2.0 * tf.matmul(f, f, transpose_b=True))
        v_lin = v_lin / tf.sqrt(tf.maximum(v_sq_norm, EPSILON))[:, :, None]
    return layer._head(u_h, tf.nn.relu(v_lin + layer.v_bias), distance)


def _every_pair_terms(layer, loss, embeddings: tf.Tensor, mined: dict[str, Any]) -> tf.Tensor:
    """The former loss of the mined quadruplets: all 3q pairs through the unit, repeats included."""
    i, j, k, l = tf.unstack(mined["quadruplets"].indices, num=4, axis=1)
    s_ij, s_ik, s_jl = tf.split(layer((tf.gather(embeddings, tf.concat([i, i, j], 0)),
                                       tf.gather(embeddings, tf.concat([j, k, l], 0)))), 3)
    return loss.quadruplet_terms(embeddings, quadruplet_tuples(mined["quadruplets"]), tf.concat([s_ij, s_ij], 0),
                                 tf.concat([s_ik, s_jl], 0)).total


def _loss_with_gradient(terms: Callable[..., tf.Tensor], layer, loss, embeddings: tf.Tensor,
                        mined: dict[str, Any]) -> Callable[[], Any]:
    """`terms`' loss and its gradient with respect to the embeddings and the unit, as one `tf.function`."""
    variable = tf.Variable(embeddings)

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            total = terms(layer, loss, variable, mined)
        gradients = tape.gradient(total, [variable, *layer.trainable_variables])
        return total + tf.add_n([tf.reduce_sum(tf.convert_to_tensor(g)) for g in gradients])

    return lambda: step().numpy()


def _model(row: str, classes: int, dim: int) -> keras.Model:
    """The row's model: "METHOD", or "METHOD+xla" compiled with jit_compile=True."""
    method, _, xla = row.partition("+")
    keras.utils.set_random_seed(0)
    network = backbone(FLAGS.backbone, FLAGS.image_size, FLAGS.channels, weights=None)
    model = build_model(method, network, dim, **method_options(method, num_classes=classes))
    model.build((None, FLAGS.image_size, FLAGS.image_size, FLAGS.channels))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=xla == "xla")
    return model


def _parse(config: str) -> tuple[int, int, int]:
    batch, dim = config.split(":")
    classes, per_class = batch.split("x")
    return int(classes), int(per_class), int(dim)


def _time_rounds(rows: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
    """ms per call of each row, one value per round; rows take turns within a round."""
    for run in rows.values():
        for _ in range(FLAGS.warmup_steps):
            run()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(FLAGS.rounds):
        for name, run in rows.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                result = run()
            times[name].append((time.perf_counter() - start) / FLAGS.steps * 1000)
            if not np.all(np.isfinite(result)):
                raise RuntimeError(f"{name}: non-finite result")
    return times


def _part(node: str) -> str:
    """Which part of a train step a graph node belongs to, from its name scope."""
    if "small_convnet" in node or "/embedding" in node or node.startswith("embedding"):
        return "backbone + head"
    if node.startswith("AddN"):
        # Grappler's rewrite of a gradient sum (a temporary buffer, assigned then accumulated); the
        # large ones sum BatchNormalization's three backward paths, common to every method.
        return "gradient sums"
    if "adam" in node.lower() or "optimizer" in node.lower():
        return "optimizer"
    return "loss + mining"


def _profile(step: Callable[[], Any]) -> dict[str, Any]:
    """Runs `step` --profile_steps times under TensorFlow's profiler and sums its trace per step: wall ms,
    kernels run, kernel ms (summed over threads) by part (`_part`) and by op type."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # TensorFlow's own trace format

    step()
    space = xplane_pb2.XSpace()
    with tempfile.TemporaryDirectory() as folder:
        tf.profiler.experimental.start(folder)
        start = time.perf_counter()
        for _ in range(FLAGS.profile_steps):
            step()
        wall = (time.perf_counter() - start) / FLAGS.profile_steps * 1000
        tf.profiler.experimental.stop()
        space.ParseFromString(pathlib.Path(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0]).read_bytes())
    parts: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    types: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue  # kernels run on the executor's threads; the Eigen pool's events nest in them
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                node, _, op = name.rpartition(":")
                if not node or "::" in name:
                    continue  # executor bookkeeping, not a kernel
                ms, part = event.duration_ps / 1e9 / FLAGS.profile_steps, _part(node)
                parts[part][0] += 1 / FLAGS.profile_steps
                parts[part][1] += ms
                types[part][op] += ms
    kernels = sum(ms for _, ms in parts.values())
    return {"wall_ms": wall, "kernels": sum(n for n, _ in parts.values()), "kernel_ms": kernels,
            "parts": {name: {"kernels": n, "kernel_ms": ms} for name, (n, ms) in sorted(parts.items())},
            "op_types_ms": {part: dict(counter.most_common(8)) for part, counter in sorted(types.items())}}


def _per_kernel_us(length: int = 2000) -> float:
    """Microseconds per kernel of a chain of `length` dependent tiny ops run by TensorFlow's executor."""

    @tf.function
    def chain(x: tf.Tensor) -> tf.Tensor:
        for _ in range(length):
            x = tf.sin(x)
        return x

    x = tf.ones([64])
    ms_per_chain = statistics.median(_time_rounds({"chain": lambda: chain(x).numpy()})["chain"])
    return ms_per_chain * 1000 / length


def _all_pairs_products(layer, m: int, d: int, rng: np.random.Generator) -> Callable[[], Any]:
    """The matrix products of `layer.all_pair_scores` on m embeddings of size d, alone (random inputs)."""
    pairs, h, h2 = m * (m + 1) // 2, layer.units, layer.combined_units

    def const(*shape: int) -> tf.Tensor:
        return tf.constant(rng.random(shape, np.float32))

    u, f, uh, vh = const(pairs, d), const(m, d), const(pairs, h), const(pairs, h)
    w_u, w_v, w_c1, w_c2, w_s = const(d, h), const(d, h), const(h, h2), const(h, h2), const(h2, 1)

    @tf.function
    def products() -> tf.Tensor:
        # Each product's result feeds a sum so that none is pruned as unused.
        return (tf.reduce_sum(tf.matmul(u, w_u)) + tf.reduce_sum(tf.matmul(f, w_v))
                + tf.reduce_sum(tf.matmul(tf.matmul(uh, w_c1) + tf.matmul(vh, w_c2), w_s)))

    return lambda: products().numpy()


def _rows_of(config: str) -> dict[str, Callable[[], Any]]:
    classes, per_class, dim = _parse(config)
    rng = np.random.default_rng(0)
    size = classes * per_class
    images = tf.constant(rng.random((size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels), np.float32))
    labels = tf.constant(np.repeat(np.arange(classes), per_class).astype(np.int32))
    rows: dict[str, Callable[[], Any]] = {}
    for method in FLAGS.methods:
        model = _model(method, classes, dim)
        rows[f"{method} step"] = (lambda m=model: m.train_on_batch(images, labels, return_dict=True)["loss"])
        if FLAGS.breakdown and hasattr(model, "pddm") and "+" not in method:
            embeddings = tf.constant(model.predict(images, verbose=0))
            layer = model.pddm
            all_pairs = tf.function(lambda e, layer=layer: layer(e))
            dense = tf.function(lambda e, layer=layer: _dense_all_pair_scores(layer, e))
            mine = tf.function(lambda e, m=model: mine_with_pddm(m.pddm, m.hinge_loss, m.mining_score, e,
                                                                 labels)["quadruplets"].indices)
            if not np.allclose(all_pairs(embeddings).numpy(), dense(embeddings).numpy(), atol=1e-5):
                raise RuntimeError("the all-pairs scores differ from the dense reference")
            rows[f"{method}: all_pairs"] = lambda f=all_pairs, e=embeddings: f(e).numpy()
            compiled = tf.function(layer.all_pair_scores, jit_compile=True)
            rows[f"{method}: all_pairs (XLA)"] = lambda f=compiled, e=embeddings: f(e).numpy()
            rows[f"{method}: dense_all_pairs"] = lambda f=dense, e=embeddings: f(e).numpy()
            if not layer.normalize_inputs:
                fused = tf.function(lambda e, layer=layer: _mining_scores(layer, e))
                if not np.allclose(all_pairs(embeddings).numpy(), fused(embeddings).numpy(), atol=1e-5):
                    raise RuntimeError("the model's mining scores differ from the layer's all-pairs scores")
                rows[f"{method}: mining scores"] = lambda f=fused, e=embeddings: f(e).numpy()
            rows[f"{method}: all_pairs products"] = _all_pairs_products(layer, size, dim, rng)
            mined = mine_with_pddm(model.pddm, model.hinge_loss, model.mining_score, embeddings, labels)
            loss = _loss_with_gradient(lambda *a: pddm_quadruplet_terms(*a)["loss"], layer, model.hinge_loss,
                                       embeddings, mined)
            every_pair = _loss_with_gradient(_every_pair_terms, layer, model.hinge_loss, embeddings, mined)
            if not np.isclose(loss(), every_pair(), rtol=1e-4):
                raise RuntimeError("the loss of the distinct pairs differs from that of every pair")
            rows[f"{method}: loss"], rows[f"{method}: loss, 3q pairs"] = loss, every_pair
            rows[f"{method}: mining"] = lambda f=mine, e=embeddings: f(e).numpy()
    return rows


def _print_profiles(rows: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Profiles every full-step row (`_profile`) and prints the per-step sums as a table."""
    profiles = {name: _profile(step) for name, step in rows.items() if name.endswith(" step")}
    names = sorted({part for p in profiles.values() for part in p["parts"]})
    print(f"\nprofile, per step ({FLAGS.profile_steps} steps traced): kernels run / kernel ms (summed over threads)")
    print(f"{'row':<34} {'wall ms':>8} {'kernels':>8} {'kernel ms':>10} " + " ".join(f"{name:>18}" for name in names))
    for name, p in profiles.items():
        cells = [f"{p['parts'][part]['kernels']:.0f} / {p['parts'][part]['kernel_ms']:.1f}" if part in p["parts"]
                 else "-" for part in names]
        print(f"{name:<34} {p['wall_ms']:>8.1f} {p['kernels']:>8.0f} {p['kernel_ms']:>10.1f} "
              + " ".join(f"{c:>18}" for c in cells))
    for name, p in profiles.items():
        for part, types in p["op_types_ms"].items():
            print(f"  {name}, {part}, by op type (kernel ms): "
                  + ", ".join(f"{op} {ms:.1f}" for op, ms in types.items()))
    per_kernel = _per_kernel_us()
    print(f"  executor cost per kernel (a chain of 2,000 tiny dependent ops): {per_kernel:.1f} us")
    return {"rows": profiles, "per_kernel_us": per_kernel}


def main(argv: list[str]) -> None:
    del argv
    print(f"{FLAGS.backbone} {FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}; {FLAGS.rounds} rounds of "
          f"{FLAGS.steps} steps; {platform.processor() or platform.machine()}, TF {tf.__version__}, "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}")
    results: dict[str, Any] = {}
    for config in FLAGS.configs:
        rows = _rows_of(config)
        times = _time_rounds(rows)
        base = statistics.median(next(iter(times.values())))
        classes, per_class, dim = _parse(config)
        print(f"\nbatch {classes} x {per_class}, d = {dim}")
        print(f"{'row':<42} {'ms median':>10} {'min':>8} {'max':>8} {'ratio':>7}")
        results[config] = {}
        for name, values in times.items():
            median = statistics.median(values)
            results[config][name] = {"median_ms": median, "min_ms": min(values), "max_ms": max(values),
                                     "ratio": median / base}
            print(f"{name:<42} {median:>10.1f} {min(values):>8.1f} {max(values):>8.1f} {median / base:>7.2f}")
        for name in list(results[config]):
            if name.endswith(": all_pairs products"):
                floor = 1 + results[config][name]["median_ms"] / base
                results[config][name]["floor_ratio"] = floor
                print(f"{name.split(':')[0]}: floor ratio (reference step + all-pairs products) / reference "
                      f"step = {floor:.3f}")
        if FLAGS.profile:
            results[config]["profile"] = _print_profiles(rows)
    if FLAGS.json:
        atomic.write_json(FLAGS.json, {"flags": {name: FLAGS[name].value for name in (
            "configs", "methods", "backbone", "image_size", "steps", "rounds")},
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "results": results}, indent=2)


if __name__ == "__main__":
    app.run(main)
