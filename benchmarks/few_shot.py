"""Few-shot classification on unseen alphabets, cross-validated over the embedded Omniglot data.

Protocol (METHODS.md section 6): 4 folds, each holding out 2 of the 8 embedded alphabets and
training on the other 6; 20-way 1-shot, 5-way 1-shot and 20-way 5-shot episodes within one
held-out alphabet, support and query images by different drawers, nearest prototype. Every
method gets the same wall-clock training budget: its steady-state seconds per step are measured
first (a short run on a throwaway model, after tracing), and it then trains
floor(budget / seconds per step) steps, so a learning-rate schedule knows its length. The
held-out 20-way 1-shot accuracy is measured after every tenth of the steps for the curve.

Rows:
  pixel              1-NN on raw pixels (no training)
  protonet           a prototypical network (Snell et al., 2017) written here: the recipe's backbone,
                     augmentation, rotations, schedule and P x K batches (32-way, 1 support + 3
                     queries per class); squared Euclidean distances between unnormalised features
  triplet_batchhard  `pddm-tf train --method=triplet_batchhard` with the CLI's defaults
  pddm_defaults      `pddm-tf train --method=pddm_quadruplet` with the defaults (the default method
                     is margin since issue 32; this row and the rows built on it stay PDDM)
  recipe             `pddm-tf train --recipe=omniglot`
  pddm_recipe        the same with --method=pddm_quadruplet
  euclidean_recipe   the same with --method=euclidean_quadruplet (quadruplets mined by Euclidean distance)
  pddm_triplet_recipe  the same with --method=pddm_triplet (one negative head)
  hdml_npair         `pddm-tf train --method=hdml_npair` with the defaults
  dc_margin          `pddm-tf train --method=dc_margin` with the defaults

  python benchmarks/few_shot.py --budget_seconds=300 --out_dir=benchmarks/results/few_shot
  python benchmarks/few_shot.py --quick          # a few steps on one fold: checks the pipeline

"The defaults" are `pddm-tf train`'s for omniglot: since 2026-12-08 (issue 32) 32 x 4 batches with rotations
and affine distortions; --defaults=plain gives the 16 x 4 batches without either of the earlier records.

More rows (e.g. a sweep) come from --variants, a JSON object: name -> {"base": row, flag: value},
e.g. '{"recipe_w96": {"base": "pddm_recipe", "backbone_width": 96}}'. Outputs in --out_dir:
results.json (every figure and curve), table.md, accuracy_vs_time.png.

Beside the episodes, every row's held-out images are scored by retrieval (Recall@K, MAP@R: each
image queries all the others of its fold's unseen alphabets), and for rows with a PDDM unit the
paper's claims about its score: "PDDM ranking" (the Euclidean top 20 re-ranked by the score) and
how well the score separates positive from negative pairs against the Euclidean distance of the
same embeddings (`evaluation.distribution_overlap`, 0 = separated); table.md's second table.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as `pddm-tf train --onednn` (its default)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from pddm_tf import atomic, data, evaluation, methods  # noqa: E402
from pddm_tf import backbone as make_backbone  # noqa: E402
from pddm_tf.data import transforms  # noqa: E402
from pddm_tf.evaluation import few_shot  # noqa: E402
from pddm_tf.methods import recipes  # noqa: E402
from pddm_tf.models import EmbeddingModel, PDDMModel  # noqa: E402
from pddm_tf.training import TrainConfig, build_model  # noqa: E402
from pddm_tf.training.config import DATASET_DEFAULTS  # noqa: E402
from pddm_tf.training.optimizers import decays_under_l2, make_optimizer  # noqa: E402
from pddm_tf.training.run import method_settings  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["pixel", "protonet", "triplet_batchhard", "pddm_defaults", "recipe", "hdml_npair",
                           "dc_margin"], "Rows to run (see the module docstring); --variants adds more.")
flags.DEFINE_list("folds", ["0", "1", "2", "3"], "Folds to run (each holds out two alphabets).")
flags.DEFINE_float("budget_seconds", 300.0, "Training budget of every method, in seconds of training steps.")
flags.DEFINE_string("variants", None, "JSON: extra rows, name -> {'base': row, flag: value, ...}.")
flags.DEFINE_enum("defaults", "dataset", ["dataset", "plain"], "The defaults' rows: `pddm-tf train`'s defaults for "
                  "omniglot (32 x 4 batches, rotations, affine distortions; issue 32), or plain: 16 x 4 batches "
                  "without either, the defaults of the records before 2026-12-08 (methods_4fold.md and earlier).")
flags.DEFINE_string("out_dir", "benchmarks/results/few_shot", "Where results.json, table.md and the plot go.")
flags.DEFINE_integer("steps", None, "Train every row exactly this many steps instead of a budget (sweeps at equal "
                     "steps on a busy machine; then the rows' times are not comparable).")
flags.DEFINE_string("row_steps", None, "JSON: row -> steps, for rows whose steps were set from seconds per step "
                    "measured earlier on a quiet machine (a busy machine's measurement would short the rows "
                    "measured during a load peak); other rows are measured as usual.")
flags.DEFINE_bool("quick", False, "CI mode: fold 0, 20 steps, 20 episodes.")
flags.DEFINE_integer("num_episodes", TrainConfig().run.evaluation.num_episodes, "Episodes per few-shot setting.")
flags.DEFINE_bool("save_embeddings", False, "Also write each row's held-out embeddings and labels to "
                  "--out_dir/embeddings/ROW_foldF.npz, with the backbone's features (to study evaluation-side choices "
                  "without retraining).")

#: The held-out alphabets of each fold: the 8 embedded alphabets in name order, in pairs.
FOLDS = (("Balinese", "Early_Aramaic"), ("Greek", "Japanese_(katakana)"), ("Korean", "Latin"),
         ("Sanskrit", "Tagalog"))
CURVE_POINTS = 10
CURVE_EPISODES = 100
SETTINGS = ("20way1shot", "5way1shot", "20way5shot")
#: Shortlist re-ranked by the PDDM score ("PDDM ranking"), as in benchmarks/paper_table.py.
RERANK = 20


# ----------------------------------------------------------------------------- prototypical network


class PrototypicalNetwork(EmbeddingModel):
    """Snell et al. (2017) on P x K batches: the first `shots` images of each class are its support,
    the other K - shots its queries; loss = cross-entropy of -||query - prototype||^2 over the P
    prototypes (means of the supports). The embedding is the backbone's features, not normalised."""

    metric_names = ("loss", "accuracy")

    def __init__(self, backbone: keras.Model, batch_per_class: int, shots: int = 1, **kwargs: Any) -> None:
        super().__init__(backbone, embedding_dim=1, head=keras.layers.Identity(), **kwargs)
        self.batch_per_class, self.shots = batch_per_class, shots

    def loss_terms(self, embeddings, labels, mined):
        del labels, mined  # Rows are grouped by class (data.class_balanced_dataset).
        grouped = tf.reshape(embeddings, [-1, self.batch_per_class, tf.shape(embeddings)[-1]])
        prototypes = tf.reduce_mean(grouped[:, : self.shots], axis=1)                   # [P, d]
        queries = grouped[:, self.shots :]                                             # [P, Q, d]
        logits = -tf.reduce_sum(tf.square(queries[:, :, None] - prototypes[None, None]), axis=-1)  # [P, Q, P]
        classes = tf.shape(prototypes)[0]
        target = tf.broadcast_to(tf.range(classes)[:, None], tf.shape(logits)[:2])
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits))
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), target), tf.float32))
        return {"loss": loss, "accuracy": accuracy}


# ----------------------------------------------------------------------------- configurations


def _cli_defaults() -> dict[str, Any]:
    """`pddm-tf train`'s defaults on omniglot (`TrainConfig().resolved()`): the single source of the
    "defaults" rows; with --defaults=plain, the defaults before the dataset-dependent ones."""
    config = TrainConfig()
    if FLAGS.defaults == "plain":
        config = config.with_flags(**{flag: plain for flag, (_, plain) in DATASET_DEFAULTS.items()})
    return config.resolved().flag_values()


def configurations() -> dict[str, dict[str, Any]]:
    """Row name -> `pddm-tf train` flag values (plus "method": "protonet" / "pixel")."""
    defaults = _cli_defaults()
    recipe = recipes.get_recipe("omniglot").config().flag_values()
    rows = {
        "pixel": {**defaults, "method": "pixel"},
        # The recipe's batches: P = 32 classes of 1 support + 3 queries each, as many steps as the recipe.
        "protonet": {**recipe, "method": "protonet"},
        "triplet_batchhard": {**defaults, "method": "triplet_batchhard"},
        # PDDM quadruplets with the defaults' other settings: the base of the comparisons (and of the
        # --variants rows that set no method, e.g. pddm_hardest), whatever the default method is.
        "pddm_defaults": {**defaults, "method": "pddm_quadruplet"},
        "recipe": recipe,
        # The recipe with PDDM quadruplets (its loss before multi-similarity, then the margin loss, measured better).
        "pddm_recipe": {**recipe, "method": "pddm_quadruplet"},
        # The PDDM paper's ablations at the recipe's settings (issue 13, item 5).
        "euclidean_recipe": {**recipe, "method": "euclidean_quadruplet"},
        "pddm_triplet_recipe": {**recipe, "method": "pddm_triplet"},
        "hdml_npair": {**defaults, "method": "hdml_npair"},
        "dc_margin": {**defaults, "method": "dc_margin"},
    }
    for name, variant in json.loads(FLAGS.variants or "{}").items():
        variant = dict(variant)
        rows[name] = {**rows[variant.pop("base")], **variant}
    return rows


def _fold_split(fold: int, rotations: bool) -> data.DatasetSplit:
    split = data.load_omniglot(test_groups=FOLDS[fold])
    train = data.with_rotations(split.train) if rotations else split.train
    return data.DatasetSplit(train=train, test=split.test, channels=1)


def _train_config(config: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_flags({name: config[name] for name in TrainConfig.field_names() if name in config})


def _build(config: dict[str, Any], split: data.DatasetSplit, total_steps: int) -> EmbeddingModel:
    """The row's model, compiled: `pddm_tf.training.build_model` of its `TrainConfig` (what `pddm-tf
    train` builds), or the prototypical network around the same backbone and optimiser."""
    if config["method"] != "protonet":
        return build_model(_train_config(config), 1, split.train.num_classes, total_steps)
    size = config["image_size"]
    network = make_backbone("small_convnet", size, 1, width=config["backbone_width"])
    model: EmbeddingModel = PrototypicalNetwork(network, config["batch_per_class"])
    model.build((None, size, size, 1))
    warmup = round(config.get("warmup_fraction", 0.0) * total_steps)
    model.compile(optimizer=make_optimizer(config["learning_rate"], config["weight_decay"],
                                           config["lr_schedule"], total_steps, warmup,
                                           config.get("ema_momentum", 0.0),
                                           config.get("weight_decay_mode", "decoupled")))
    return model


def _pipeline(model, config, split, steps_per_epoch):
    size = config["image_size"]
    augment = transforms.affine_transform(size) if config["affine"] else None
    # The method's own defaults for what the row leaves unset (Divide-and-Conquer's schedule), as `pddm-tf train`.
    settings = {} if config["method"] == "protonet" else method_settings(_train_config(config), split.train.num_classes)
    return methods.training_pipeline(model, split.train, config["batch_classes"], config["batch_per_class"], size, 1,
                                     seed=config["seed"], recluster_every=settings.get("recluster_every", 2),
                                     conquer_epochs=settings.get("conquer_epochs", 1),
                                     cluster_on=settings.get("cluster_on", "features"), augment=augment,
                                     steps_per_epoch=steps_per_epoch)


class _StepTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.times.append(time.perf_counter())


def seconds_per_step(config: dict[str, Any], split: data.DatasetSplit, steps: int = 40, skip: int = 10) -> float:
    """Steady-state seconds per training step of `config` (a throwaway model; tracing excluded)."""
    keras.utils.set_random_seed(config["seed"])
    model = _build(config, split, total_steps=steps)
    train, callbacks = _pipeline(model, config, split, steps)
    timer = _StepTimer()
    model.fit(train, epochs=1, steps_per_epoch=steps, callbacks=[*callbacks, timer], verbose=0)
    return (timer.times[-1] - timer.times[skip - 1]) / (steps - skip)


class _Curve(keras.callbacks.Callback):
    """Held-out 20-way 1-shot accuracy after each epoch, against the training seconds so far."""

    def __init__(self, test: data.ImageFiles, size: int, episodes: int, seed: int) -> None:
        super().__init__()
        self.test, self.episodes, self.seed = test, episodes, seed
        self.held_out = _held_out(test, size)
        self.points: list[tuple[float, float]] = []
        self.train_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.train_seconds += time.perf_counter() - self._start
        embeddings = evaluation.embed_dataset(self.model, self.held_out)[0]
        accuracy = few_shot.evaluate_few_shot(embeddings, self.test, ("20way1shot",), self.episodes, self.seed)
        self.points.append((self.train_seconds, accuracy["oneshot_20way"]))


def _held_out(files: data.ImageFiles, size: int) -> tf.data.Dataset:
    """The held-out images in batches, decoded once: every curve point embeds them again."""
    return data.evaluation_dataset(files, size, 1, 256).cache()


def _row_steps() -> dict[str, int]:
    return {name: int(steps) for name, steps in json.loads(FLAGS.row_steps or "{}").items()}


def retrieval_figures(model: keras.Model | None, embeddings: np.ndarray, labels: np.ndarray, seed: int
                      ) -> dict[str, float]:
    """Recall@K, MAP@R and NMI of the held-out embeddings; the overlap of positive- and negative-pair
    similarities ("euclidean_overlap"); and for a model with a PDDM unit, the same with its score
    ("score_overlap") and the retrieval figures after re-ranking each Euclidean top `RERANK` by it
    ("pddm_ranking_recall@1", "pddm_ranking_map@r")."""
    figures = evaluation.evaluate_retrieval(embeddings, labels, seed=seed)
    pair_scores = None
    if isinstance(model, PDDMModel):
        def pair_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return model.pddm((a, b)).numpy()

        ranked = evaluation.evaluate_retrieval(embeddings, labels, seed=seed, rerank=RERANK, pair_scores=pair_scores)
        figures.update({f"pddm_ranking_{key}": ranked[key] for key in ("recall@1", "map@r")})
    similarities = evaluation.pair_similarities(embeddings, labels, pair_scores, seed=seed)
    for kind, positive in similarities["positive"].items():
        figures[f"{kind}_overlap"] = evaluation.distribution_overlap(positive, similarities["negative"][kind])
    return figures


def kernel_norm(model: keras.Model) -> float:
    """sqrt(sum ||W||^2) over the model's trainable kernels (what --weight_decay_mode=l2 decays): the
    same seed's rows with and without a weight decay show what the decay did to the weights."""
    return float(np.sqrt(sum(np.sum(np.square(v.numpy())) for v in model.trainable_variables
                             if decays_under_l2(v))))


def run_row(name: str, config: dict[str, Any], fold: int, rate: float | None, episodes: int) -> dict[str, Any]:
    """Trains (or not, for pixels) one row on one fold; returns its figures."""
    split = _fold_split(fold, config["rotations"] and config["method"] != "pixel")
    seed = config["seed"]
    if config["method"] == "pixel":
        pixels = data.evaluation_dataset(split.test, config["image_size"], 1, 256)
        embeddings = np.concatenate([x.numpy().reshape(len(x), -1) for x, _ in pixels])
        result: dict[str, Any] = {"steps": 0, "train_seconds": 0.0, "curve": []}
        model = None
    else:
        if FLAGS.quick:
            steps = 20
        elif FLAGS.steps or name in _row_steps():
            steps = FLAGS.steps or _row_steps()[name]
            steps = max(CURVE_POINTS, steps // CURVE_POINTS * CURVE_POINTS)
        else:
            steps = max(CURVE_POINTS, int(FLAGS.budget_seconds / rate) // CURVE_POINTS * CURVE_POINTS)
        keras.utils.set_random_seed(seed)
        model = _build(config, split, steps)
        per_epoch = steps // CURVE_POINTS if not FLAGS.quick else 10
        train, callbacks = _pipeline(model, config, split, per_epoch)
        curve = _Curve(split.test, config["image_size"], CURVE_EPISODES if not FLAGS.quick else 10, seed)
        model.fit(train, epochs=steps // per_epoch, steps_per_epoch=per_epoch, callbacks=[*callbacks, curve],
                  verbose=0)
        embeddings = evaluation.embed_dataset(model, curve.held_out)[0]
        if FLAGS.save_embeddings:
            folder = pathlib.Path(FLAGS.out_dir) / "embeddings"
            folder.mkdir(parents=True, exist_ok=True)
            # The backbone's pooled features too: what the head projects, for comparison.
            features = evaluation.embed_dataset(model.backbone, curve.held_out)[0]
            with atomic.replacing(folder / f"{name}_fold{fold}.npz", suffix=".npz") as path:
                np.savez(path, embeddings=embeddings, features=features, labels=split.test.labels,
                         paths=np.asarray(split.test.paths), rotations=split.test.rotations)
        result = {"steps": steps, "train_seconds": curve.train_seconds, "curve": curve.points,
                  "seconds_per_step": rate, "kernel_norm": kernel_norm(model)}
    result.update(few_shot.evaluate_few_shot(embeddings, split.test, SETTINGS, episodes, seed))
    result.update(retrieval_figures(model, embeddings, split.test.labels, seed))
    print(f"fold {fold} {name:<22} " + " ".join(f"{few_shot.setting_key(*few_shot.parse_setting(s))} "
          f"{result[few_shot.setting_key(*few_shot.parse_setting(s))]:.3f}" for s in SETTINGS)
          + f" R@1 {result['recall@1']:.3f}  ({result['steps']} steps, {result['train_seconds']:.0f} s)", flush=True)
    return result


def _table(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    folds = sorted({f for per_fold in results.values() for f in per_fold})
    keys = [few_shot.setting_key(*few_shot.parse_setting(s)) for s in SETTINGS]
    head = ["row", *[f"fold {f} 20w1s" for f in folds], "20-way 1-shot", "5-way 1-shot", "20-way 5-shot",
            "steps", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per_fold in results.items():
        cells = [name] + [f"{per_fold[f][keys[0]]:.3f}" if f in per_fold else "" for f in folds]
        for key in keys:
            values = np.array([per_fold[f][key] for f in per_fold])
            # Mean over folds +- 1.96 x the standard error of the fold means (each already averages >= 400 episodes).
            spread = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else per_fold[
                next(iter(per_fold))][f"{key}_ci95"]
            cells.append(f"{values.mean():.3f} ± {spread:.3f}")
        cells.append(f"{np.mean([r['steps'] for r in per_fold.values()]):.0f}")
        cells.append(f"{np.mean([r['train_seconds'] for r in per_fold.values()]):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


RETRIEVAL_COLUMNS = (("recall@1", "R@1"), ("recall@8", "R@8"), ("map@r", "MAP@R"),
                     ("pddm_ranking_recall@1", "PDDM ranking R@1"), ("euclidean_overlap", "overlap, distance"),
                     ("score_overlap", "overlap, PDDM score"))


def _retrieval_table(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Retrieval among the held-out images and the pair-score separation: the mean over folds."""
    head = ["row (mean over folds)", *[title for _, title in RETRIEVAL_COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per_fold in results.items():
        cells = [name] + [f"{np.mean([r[key] for r in per_fold.values()]):.3f}"
                          if all(key in r for r in per_fold.values()) else "—" for key, _ in RETRIEVAL_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, dict[int, dict[str, Any]]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.5))
    for name, per_fold in results.items():
        curves = [r["curve"] for r in per_fold.values() if r["curve"]]
        if not curves:
            pixel = np.mean([r["oneshot_20way"] for r in per_fold.values()])
            axis.axhline(pixel, color="grey", linestyle=":", label=f"{name} ({pixel:.3f})")
            continue
        length = min(len(c) for c in curves)
        seconds = np.mean([[p[0] for p in c[:length]] for c in curves], axis=0)
        accuracy = np.mean([[p[1] for p in c[:length]] for c in curves], axis=0)
        axis.plot(seconds / 60, accuracy, marker="o", markersize=3, label=name)
    axis.set_xlabel("training time (minutes, mean over folds)")
    axis.set_ylabel(f"held-out 20-way 1-shot accuracy ({CURVE_EPISODES} episodes)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str]) -> None:
    del argv
    configs = configurations()
    unknown = [row for row in FLAGS.rows if row not in configs]
    if unknown:
        raise app.UsageError(f"unknown rows {unknown}; known: {sorted(configs)}")
    folds = [0] if FLAGS.quick else [int(f) for f in FLAGS.folds]
    episodes = 20 if FLAGS.quick else FLAGS.num_episodes
    out_dir = pathlib.Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rates = {}
    for name in FLAGS.rows:
        if configs[name]["method"] != "pixel" and not FLAGS.quick and not FLAGS.steps and name not in _row_steps():
            rates[name] = seconds_per_step(configs[name], _fold_split(folds[0], configs[name]["rotations"]))
            print(f"{name}: {rates[name] * 1000:.0f} ms per step -> "
                  f"{int(FLAGS.budget_seconds / rates[name])} steps in {FLAGS.budget_seconds:.0f} s", flush=True)
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in FLAGS.rows}
    for fold in folds:
        for name in FLAGS.rows:
            results[name][fold] = run_row(name, configs[name], fold, rates.get(name), episodes)
            payload = {"budget_seconds": FLAGS.budget_seconds, "episodes": episodes, "folds": FOLDS,
                       "command": " ".join(sys.argv), "configs": {n: configs[n] for n in FLAGS.rows},
                       "results": results}
            atomic.write_text(out_dir / "results.json", json.dumps(payload, indent=1, default=str))
    table = _table(results) + "\n" + _retrieval_table(results)
    atomic.write_text(out_dir / "table.md", table)
    print("\n" + table)
    _plot(results, out_dir / "accuracy_vs_time.png")


if __name__ == "__main__":
    app.run(main)
