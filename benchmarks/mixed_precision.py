"""Train-step time of one method under float32 and mixed precision, side by side in one run.

Builds the same model (small_convnet by default, the `pddm-tf train` defaults: batch 16 x 4, d = 64)
once per dtype policy, copies the float32 weights into the others, and times `train_on_batch` on one
fixed random batch (the input pipeline is left out). The policies take turns within each round, so
load from other jobs affects them alike. Reported per policy: median (min, max) ms per step over
--rounds rounds of --steps steps, and the ratio of medians to float32 (> 1: slower).

On a CPU without native bfloat16 / float16 arithmetic, mixed precision adds casts and emulation and
is expected to be slower; the figure that matters is on GPUs and TPUs. This script measures what it
costs where it runs.

  nice -n 19 python benchmarks/mixed_precision.py --policies=float32,mixed_bfloat16
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pddm_tf import backbone  # noqa: E402
from pddm_tf.methods import build_model, method_options  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("method", "pddm_quadruplet", "Training method (pddm_tf.methods).")
flags.DEFINE_string("backbone", "small_convnet", "Backbone name.")
flags.DEFINE_integer("image_size", 32, "Input side.")
flags.DEFINE_integer("channels", 1, "Input channels.")
flags.DEFINE_integer("embedding_dim", 64, "d.")
flags.DEFINE_integer("batch_classes", 16, "P.")
flags.DEFINE_integer("batch_per_class", 4, "K.")
flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Dtype policies; the first is the reference.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps per policy before the rounds (tracing included).")
flags.DEFINE_integer("steps", 10, "Timed steps per round and policy.")
flags.DEFINE_integer("rounds", 5, "Rounds; the median over rounds is reported.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def _model(policy: str) -> keras.Model:
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        network = backbone(FLAGS.backbone, FLAGS.image_size, FLAGS.channels, weights=None)
        model = build_model(FLAGS.method, network, FLAGS.embedding_dim,
                            **method_options(FLAGS.method, num_classes=FLAGS.batch_classes))
        model.build((None, FLAGS.image_size, FLAGS.image_size, FLAGS.channels))
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    size = FLAGS.batch_classes * FLAGS.batch_per_class
    images = tf.constant(rng.random((size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels), np.float32))
    labels = tf.constant(np.repeat(np.arange(FLAGS.batch_classes), FLAGS.batch_per_class).astype(np.int32))
    models = {policy: _model(policy) for policy in FLAGS.policies}
    reference = models[FLAGS.policies[0]]
    for model in models.values():
        model.set_weights(reference.get_weights())
        for _ in range(FLAGS.warmup_steps):
            model.train_on_batch(images, labels)
    times: dict[str, list[float]] = {policy: [] for policy in models}
    for _ in range(FLAGS.rounds):
        for policy, model in models.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                loss = model.train_on_batch(images, labels, return_dict=True)["loss"]
            times[policy].append((time.perf_counter() - start) / FLAGS.steps * 1000)
            if not np.isfinite(loss):
                raise RuntimeError(f"{policy}: non-finite loss {loss}")
    base = statistics.median(times[FLAGS.policies[0]])
    print(f"{FLAGS.method}, {FLAGS.backbone} {FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}, batch "
          f"{FLAGS.batch_classes} x {FLAGS.batch_per_class}, d = {FLAGS.embedding_dim}; {FLAGS.rounds} rounds of "
          f"{FLAGS.steps} steps; {platform.processor() or platform.machine()}, TF {tf.__version__}")
    print(f"{'policy':<16} {'ms/step median':>15} {'min':>8} {'max':>8} {'ratio':>7}")
    results = {}
    for policy, values in times.items():
        median = statistics.median(values)
        results[policy] = {"median_ms": median, "min_ms": min(values), "max_ms": max(values), "ratio": median / base}
        print(f"{policy:<16} {median:>15.1f} {min(values):>8.1f} {max(values):>8.1f} {median / base:>7.2f}")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump({"flags": {name: FLAGS[name].value for name in ("method", "backbone", "image_size",
                                                                     "embedding_dim", "batch_classes",
                                                                     "batch_per_class", "steps", "rounds")},
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
