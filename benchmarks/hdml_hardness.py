"""HDML's hardness schedule on the embedded Omniglot data: exp(-alpha / J_avg) and lambda0 per step.

Trains `hdml_npair` (or --base=triplet / pddm; small_convnet, d = 64, 16 x 4 batches, Adam 1e-3) for
--steps steps, once per alpha setting, and logs every step's hardness factor exp(-alpha / J_avg) (1 = the original
negative, 0 = as close as the positive), the mean lambda0 of the synthetic negatives, the
real-sample weight exp(-beta / J_gen_avg) and the losses. Output (in --out_dir):

  hardness.json   the per-step logs of each run
  hardness.png    hardness factor, mean lambda0 and real-sample weight against training step

  python benchmarks/hdml_hardness.py                   # 640 steps (10 blocks of 64), calibrated vs alpha = 90
  python benchmarks/hdml_hardness.py --steps=128       # a quick look
"""

from __future__ import annotations

import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from pddm_tf import data, small_convnet  # noqa: E402
from pddm_tf.models.hdml import HardnessSchedule, HDMLModel, SynthesisConfig  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 640, "Training steps per run.")
flags.DEFINE_enum("base", "npair", ["npair", "triplet", "pddm"], "HDML's base loss.")
flags.DEFINE_list("alphas", ["calibrated", "90"], "alpha settings: 'calibrated' (alpha=None) or a number.")
flags.DEFINE_enum("generator_input", "single", ["single", "anchor_pair"], "HDML generator input.")
flags.DEFINE_integer("seed", 0, "Seed: initialisation and batch sampling.")
flags.DEFINE_bool("normalize_embeddings", False, "Train the N-pair loss on unit-norm embeddings (the library's "
                  "reading before issue 31) instead of the authors' unnormalised ones with the N-pair regulariser.")
flags.DEFINE_string("out_dir", "benchmarks/results/hdml", "Where results and the plot go.")

SIZE, LOGGED = 32, ("easiness", "lambda0", "j_avg", "alpha", "j_gen_avg", "metric_loss_real", "j_recon", "j_soft",
                    "classifier_loss", "synthetic_accuracy")


def run(alpha: str, split: data.DatasetSplit) -> dict[str, list[float]]:
    keras.utils.set_random_seed(FLAGS.seed)
    model = HDMLModel(small_convnet(SIZE, 1), 64, num_classes=split.train.num_classes, base=FLAGS.base,
                      hardness=HardnessSchedule(alpha=None if alpha == "calibrated" else float(alpha)),
                      synthesis=SynthesisConfig(generator_input=FLAGS.generator_input),
                      normalize_embeddings=FLAGS.normalize_embeddings if FLAGS.base == "npair" else None)
    model.build((None, SIZE, SIZE, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    train = data.class_balanced_dataset(split.train, 16, 4, SIZE, 1, seed=FLAGS.seed)
    start = time.perf_counter()
    # One epoch per step, so the History holds every step's values (Keras' epoch logs are running
    # means over the epoch).
    history = model.fit(train, epochs=FLAGS.steps, steps_per_epoch=1, verbose=0).history
    logs = {name: [float(v) for v in history[name]] for name in LOGGED}
    logs["real_weight"] = [float(np.exp(-model.hardness.beta / g)) for g in logs["j_gen_avg"]]
    print(f"alpha={alpha}: {FLAGS.steps} steps in {time.perf_counter() - start:.0f} s; hardness factor at steps "
          + ", ".join(f"{s}: {logs['easiness'][s]:.3g}" for s in range(0, FLAGS.steps, 64)), flush=True)
    return logs


def plot(results: dict[str, dict[str, list[float]]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for alpha, logs in results.items():
        steps = np.arange(1, len(logs["easiness"]) + 1)
        label = "alpha calibrated (default)" if alpha == "calibrated" else f"alpha = {alpha} (original)"
        axes[0].plot(steps, logs["easiness"], label=label)
        axes[1].plot(steps, logs["lambda0"], label=label)
        axes[2].plot(steps, logs["real_weight"], label=label)
    axes[0].set(xlabel="training step", ylabel="exp(-alpha / J_avg)", title="hardness factor (1 = easy)",
                ylim=(-0.02, 1.02))
    axes[1].set(xlabel="training step", ylabel="mean lambda0", title="synthetic negative position (1 = unchanged)")
    axes[2].set(xlabel="training step", ylabel="exp(-beta / J_gen_avg)", title="weight of the real-sample loss",
                ylim=(-0.02, 1.02))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"HDML + {FLAGS.base} on Omniglot (small_convnet, d = 64, 16 x 4 batches, seed {FLAGS.seed}, "
                 f"generator input: {FLAGS.generator_input})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str]) -> None:
    del argv
    out = pathlib.Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = data.load_omniglot(test_fraction=0.5, seed=0)
    results = {alpha: run(alpha, split) for alpha in FLAGS.alphas}
    (out / "hardness.json").write_text(json.dumps({"steps": FLAGS.steps, "seed": FLAGS.seed,
                                                   "generator_input": FLAGS.generator_input, "runs": results}))
    plot(results, out / "hardness.png")
    print(f"written {out / 'hardness.json'} and {out / 'hardness.png'}")


if __name__ == "__main__":
    app.run(main)
