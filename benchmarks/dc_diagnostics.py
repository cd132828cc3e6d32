"""Why Divide-and-Conquer does not beat its K = 1 base here: cluster quality, slice capacity, steps per learner.

METHODS.md section 4 ("Measured"), issue 31 item 6. On the embedded Omniglot few-shot fold 0 (the split of
benchmarks/few_shot.py: 6 alphabets to train on, 2 held out), for K in --ks:

  (i)   cluster quality (`pddm_tf.models.clustering.cluster_quality`: class coherence, NMI with the classes,
        fraction dropped, cluster sizes) of the k-means that `DivideAndConquer` runs, on the backbone features of
        an untrained network and of the same network after --steps steps of the plain `margin` method (K = 1),
        beside the same cluster sizes drawn at random (the chance level of every figure);
  (ii)  capacity: the held-out 20-way 1-shot accuracy of a plain `margin` model whose embedding is d / K wide
        (what one learner's slice holds) against d, each trained --steps steps as in few_shot.py (10 epochs);
  (iii) steps per learner: --steps x (1 - conquer share) / K under `dc_margin`'s schedule (its conquer epochs of
        few_shot.py's 10 epochs); the shared backbone still takes every step.

  nice -n 15 python benchmarks/dc_diagnostics.py --steps=1000 --json=benchmarks/results/dc_diagnostics.json

Training runs: one per width (d and d / K for each K): 3 at the defaults.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from typing import Any

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import few_shot  # noqa: E402  (its --steps and --num_episodes flags are this script's too)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from pddm_tf import atomic, data, evaluation  # noqa: E402
from pddm_tf.evaluation.few_shot import evaluate_few_shot  # noqa: E402
from pddm_tf.models.clustering import (  # noqa: E402
    cluster_features,
    cluster_quality,
    drop_singleton_classes,
    kmeans_clusters,
)
from pddm_tf.training import TrainConfig, build_model  # noqa: E402
from pddm_tf.training.run import method_settings  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("ks", ["2", "4"], "Numbers of clusters / learners K to diagnose.")
flags.DEFINE_integer("fold", 0, "The few-shot fold (benchmarks/few_shot.py FOLDS).")
flags.DEFINE_string("json", None, "Also write every figure to this JSON file.")
FLAGS.set_default("steps", 1000)

QUALITY = ("coherence", "nmi", "dropped", "size_min", "size_max")


def _clusters(features: np.ndarray, labels: np.ndarray, k: int, seed: int) -> dict[str, dict[str, float]]:
    """Quality of DivideAndConquer's clustering (k-means, singleton classes dropped) and of random ids of the
    same cluster sizes."""
    clusters = kmeans_clusters(features, k, seed)
    shuffled = np.random.default_rng(seed).permutation(clusters)
    return {"kmeans": cluster_quality(drop_singleton_classes(clusters, labels, k), labels, k),
            "random": cluster_quality(drop_singleton_classes(shuffled, labels, k), labels, k)}


def _quality_of(model: keras.Model, split: data.DatasetSplit, size: int, ks: list[int], seed: int
                ) -> dict[int, dict[str, dict[str, float]]]:
    features = cluster_features(model, split.train, size, 1, "features")
    return {k: _clusters(features, split.train.labels, k, seed) for k in ks}


def _train(config: TrainConfig, split: data.DatasetSplit, steps: int, episodes: int, ks: list[int] | None
           ) -> dict[str, Any]:
    """Trains `config` `steps` steps in few_shot.py's 10 epochs; its held-out 20-way 1-shot accuracy, and with
    `ks` the cluster quality of its backbone before and after training."""
    seed, size = config.run.seed, config.data.images.size
    keras.utils.set_random_seed(seed)
    model = build_model(config, 1, split.train.num_classes, steps)
    result: dict[str, Any] = {}
    if ks:
        result["untrained"] = _quality_of(model, split, size, ks, seed)
    per_epoch = steps // few_shot.CURVE_POINTS
    train, callbacks = few_shot._pipeline(model, config.flag_values(), split, per_epoch)
    start = time.perf_counter()
    model.fit(train, epochs=steps // per_epoch, steps_per_epoch=per_epoch, callbacks=callbacks, verbose=0)
    result["train_seconds"] = time.perf_counter() - start
    assert split.test is not None  # load_omniglot(test_groups=...) holds alphabets out
    embeddings = evaluation.embed_dataset(model, few_shot._held_out(split.test, size))[0]
    result.update(evaluate_few_shot(embeddings, split.test, ("20way1shot",), episodes, seed))
    if ks:
        result["trained"] = _quality_of(model, split, size, ks, seed)
    return result


def _table(results: dict[str, Any], ks: list[int]) -> str:
    lines = ["| K | features of | k-means coherence | random coherence | k-means NMI | random NMI | dropped | "
             "cluster sizes |", "|---|---|---|---|---|---|---|---|"]
    base = results["widths"][str(results["embedding_dim"])]
    for k in ks:
        for when in ("untrained", "trained"):
            q = base[when][k]
            lines.append(f"| {k} | {when} network | {q['kmeans']['coherence']:.3f} | {q['random']['coherence']:.3f} | "
                         f"{q['kmeans']['nmi']:.3f} | {q['random']['nmi']:.3f} | {q['kmeans']['dropped']:.3f} | "
                         f"{q['kmeans']['size_min']:.0f}-{q['kmeans']['size_max']:.0f} |")
    lines += ["", "| embedding width | as one learner of | held-out 20-way 1-shot | train s |", "|---|---|---|---|"]
    for width, row in results["widths"].items():
        owner = "K = 1" if int(width) == results["embedding_dim"] else f"K = {results['embedding_dim'] // int(width)}"
        lines.append(f"| {width} | {owner} | {row['oneshot_20way']:.3f} ± {row['oneshot_20way_ci95']:.3f} | "
                     f"{row['train_seconds']:.0f} |")
    lines += ["", "| K | steps | conquer share | steps per learner |", "|---|---|---|---|"]
    for k, row in results["steps_per_learner"].items():
        lines.append(f"| {k} | {results['steps']} | {row['conquer_share']:.2f} | {row['steps']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    ks = sorted(int(k) for k in FLAGS.ks)
    steps, episodes = FLAGS.steps, FLAGS.num_episodes
    # few_shot.py's defaults (its --defaults flag: the record ran at the plain ones), resolved for omniglot.
    base = TrainConfig.from_flags({**few_shot._cli_defaults(), "method": "margin"})
    d = base.model.embedding_dim
    if any(k < 2 or d % k for k in ks):
        raise app.UsageError(f"every K of --ks must be >= 2 and divide embedding_dim {d}, got {ks}")
    split = few_shot._fold_split(FLAGS.fold, bool(base.data.images.rotations))
    assert split.test is not None  # load_omniglot(test_groups=...) holds alphabets out
    print(f"fold {FLAGS.fold}: {split.train.num_classes} training classes ({len(split.train)} images), "
          f"{split.test.num_classes} held-out classes; {steps} steps per run", flush=True)
    # dc_margin's schedule in few_shot.py's protocol: 10 epochs, the last conquer_epochs on all data.
    dc = method_settings(TrainConfig.from_flags(method="dc_margin"), split.train.num_classes)
    share = dc["conquer_epochs"] / few_shot.CURVE_POINTS
    results: dict[str, Any] = {"command": " ".join(sys.argv), "fold": FLAGS.fold, "steps": steps,
                               "episodes": episodes, "embedding_dim": d, "load_average_before": os.getloadavg(),
                               "steps_per_learner": {k: {"conquer_share": share, "steps": steps * (1 - share) / k}
                                                     for k in ks}, "widths": {}}
    for width in [d, *(d // k for k in reversed(ks))]:
        results["widths"][str(width)] = _train(base.with_flags(embedding_dim=width), split, steps, episodes,
                                               ks if width == d else None)
        row = results["widths"][str(width)]
        print(f"d = {width}: 20-way 1-shot {row['oneshot_20way']:.3f} ({row['train_seconds']:.0f} s)", flush=True)
        if FLAGS.json:
            atomic.write_text(pathlib.Path(FLAGS.json), json.dumps(results, indent=1))
    results["load_average_after"] = os.getloadavg()
    if FLAGS.json:
        atomic.write_text(pathlib.Path(FLAGS.json), json.dumps(results, indent=1))
    print("\n" + _table(results, ks))


if __name__ == "__main__":
    app.run(main)
