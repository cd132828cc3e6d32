"""Is a fresh PDDM unit distance-aware? Spearman correlation of its initial scores with -distance.

On real embedded pairs: 64 held-out Omniglot images (16 characters x 4 drawers, the embedded data's
default character split, seed 0) embedded by a fresh `small_convnet` (28 x 28) and `EmbeddingHead`
(64-d, unit norm); for each seed, every candidate unit scores the 2,016 pairs, and the Spearman
correlation between the scores and minus the Euclidean distance of the pairs is reported (mean, min
and max over the seeds). Candidates (METHODS.md section 1; `pddm_tf.layers.PDDM`):

  paper_raw          the recalled unit, raw inputs (distance_weight=0)
  paper_normalised   the same with normalize_inputs=True
  bias_0.1, bias_1   paper_raw with b_u = b_v = 0.1 or 1 (positive bias initialisation)
  distance_joint     paper_raw with ||f_i - f_j|| as one more input of the joint layer c (its
                     column of W_c Glorot-initialised like the others; numpy, on the layer's weights)
  prior_full_ws      the Euclidean prior -g ||f_i - f_j|| (g = 1) with a Glorot-initialised w_s
  prior (default)    the same with w_s at a tenth of the Glorot scale: `PDDM()`

  CUDA_VISIBLE_DEVICES= nice -n 5 python benchmarks/pddm_init.py --seeds=5
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pddm_tf import backbone, data  # noqa: E402
from pddm_tf.layers import PDDM, EmbeddingHead  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("seeds", 5, "Number of seeds (backbone, head and unit initialisations).")
flags.DEFINE_integer("image_size", 28, "Image side.")

#: candidate -> PDDM arguments, and the initial value of b_u and b_v (None: the layer's zeros).
CANDIDATES: dict[str, tuple[dict, float | None]] = {
    "paper_raw": ({"distance_weight": 0.0}, None),
    "paper_normalised": ({"distance_weight": 0.0, "normalize_inputs": True}, None),
    "bias_0.1": ({"distance_weight": 0.0}, 0.1),
    "bias_1": ({"distance_weight": 0.0}, 1.0),
    "distance_joint": ({"distance_weight": 0.0}, None),
    "prior_full_ws": ({"score_initializer": "glorot_uniform"}, None),
    "prior (default)": ({}, None),
}


def held_out_images(image_size: int, classes: int = 16, per_class: int = 4) -> np.ndarray:
    """[classes * per_class, s, s, 1] held-out images, the first `per_class` of `classes` random characters."""
    files = data.load_omniglot(test_fraction=0.5, seed=0).test
    chosen = np.random.default_rng(0).choice(len(files.class_names), classes, replace=False)
    rows = np.concatenate([np.flatnonzero(files.labels == c)[:per_class] for c in chosen])
    return np.stack([data.decode.read_image(tf.constant(files.paths[r]), image_size, 1).numpy() for r in rows])


def fresh_embeddings(images: np.ndarray, seed: int) -> np.ndarray:
    """Unit-norm 64-d embeddings of `images` by a freshly initialised small_convnet and head."""
    keras.utils.set_random_seed(seed)
    network = backbone("small_convnet", images.shape[1], 1)
    return EmbeddingHead(64)(network(images, training=False)).numpy()


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties broken by order: the scores are continuous)."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def _distance_joint_scores(layer: PDDM, f: np.ndarray, i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
    """The paper's unit with ||f_i - f_j|| appended to [u''; v''] before W_c (numpy, float64)."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    w = {v.path.split("/")[-1]: v.numpy().astype(np.float64) for v in layer.weights}
    f = unit(f.astype(np.float64))
    u, v = np.abs(f[i] - f[j]), (f[i] + f[j]) / 2
    u1, v1 = unit(np.maximum(u @ w["u_kernel"], 0)), unit(np.maximum(v @ w["v_kernel"], 0))
    fan_in, fan_out = w["c_kernel"].shape[0] + 1, w["c_kernel"].shape[1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    column = np.random.default_rng(seed).uniform(-limit, limit, (1, fan_out))
    c = np.maximum(np.concatenate([u1, v1], 1) @ w["c_kernel"] + np.linalg.norm(u, axis=1)[:, None] @ column, 0)
    return (c @ w["s_kernel"])[:, 0]


def measure(seeds: int, image_size: int) -> dict[str, list[float]]:
    images = held_out_images(image_size)
    i, j = np.triu_indices(len(images), 1)
    results: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for seed in range(seeds):
        f = fresh_embeddings(images, seed)
        distance = np.linalg.norm(f[i] - f[j], axis=1)
        for name, (kwargs, bias) in CANDIDATES.items():
            keras.utils.set_random_seed(100 + seed)
            layer = PDDM(**kwargs)
            layer.build((None, f.shape[1]))
            if bias is not None:
                layer.u_bias.assign(np.full(layer.units, bias, np.float32))
                layer.v_bias.assign(np.full(layer.units, bias, np.float32))
            if name == "distance_joint":
                scores = _distance_joint_scores(layer, f, i, j, seed)
            else:
                scores = layer(tf.constant(f)).numpy()[i, j]
            results[name].append(spearman(scores, -distance))
        print(f"seed {seed}: pair distances 5/50/95th percentiles {np.percentile(distance, [5, 50, 95]).round(3)}")
    return results


def main(argv: list[str]) -> None:
    del argv
    results = measure(FLAGS.seeds, FLAGS.image_size)
    print(f"\n| candidate | Spearman(S, -distance) mean | min | max |  ({FLAGS.seeds} seeds)\n|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {np.mean(values):+.3f} | {np.min(values):+.3f} | {np.max(values):+.3f} |")


if __name__ == "__main__":
    app.run(main)
