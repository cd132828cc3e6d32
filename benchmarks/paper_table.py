"""The PDDM paper's comparison, reproduced on the embedded Omniglot data.

Every method gets the same backbone, embedding size, P x K batches, optimiser and step budget, on
the same disjoint-class split; each runs with several seeds. Output (in --out_dir):

  results.json          every run's figures, R@1-vs-step curve and wall time
  table.md              mean +- std over seeds of Recall@1/2/4/8, NMI, MAP@R, and wall time
  recall_curve.png      held-out R@1 against training step, one line per method (mean over seeds)
  similarity_hist.png   held-out positive vs negative pair similarities, PDDM score against
                        Euclidean distance, with the overlap of the two distributions

  python benchmarks/paper_table.py                # the full run (about 40 minutes on 2 cores)
  python benchmarks/paper_table.py --quick        # a few steps, one seed: checks the pipeline

Divide-and-Conquer methods (dc_margin, dc_pddm) run once per --num_learners value K, as rows
"dc_margin_k1", "dc_margin_k2", ...; K = 1 is the base loss without Divide-and-Conquer. Their rows
also report the seconds spent clustering (recluster_s).
"""

from __future__ import annotations

import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from pddm_tf import atomic, data, evaluation, methods, small_convnet  # noqa: E402
from pddm_tf.models import PDDMModel  # noqa: E402
from pddm_tf.models.clustering import DivideAndConquer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", list(methods.METHODS), "Methods to train (keys of pddm_tf.methods.METHODS).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: initialisation and batch sampling.")
flags.DEFINE_integer("steps", 300, "Training steps per run.")
flags.DEFINE_integer("eval_every", 50, "Steps between held-out R@1 measurements for the curve.")
flags.DEFINE_integer("image_size", 32, "Image side.")
flags.DEFINE_integer("embedding_dim", 64, "Embedding size.")
flags.DEFINE_integer("batch_classes", 16, "P.")
flags.DEFINE_integer("batch_per_class", 4, "K.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate, all methods.")
flags.DEFINE_float("alpha", 1.0, "PDDM methods: margin of the PDDM-score hinge.")
flags.DEFINE_float("beta", 0.5, "PDDM methods: margin of the squared-distance hinge.")
flags.DEFINE_float("embedding_weight", 0.5, "PDDM methods: lambda, weight of the embedding loss.")
flags.DEFINE_enum("mining", "per_pair", ["per_pair", "hardest"], "PDDM methods: quadruplets per batch.")
flags.DEFINE_integer("rerank", 20, "Shortlist size R for the PDDM-ranking row.")
flags.DEFINE_string("out_dir", "benchmarks/results/paper_table", "Where results and plots go.")
flags.DEFINE_list("num_learners", ["1", "2", "4"], "Divide-and-Conquer methods: the values of K to run.")
flags.DEFINE_integer("recluster_every", 2, "Divide-and-Conquer: re-cluster every T curve epochs (of eval_every steps).")
flags.DEFINE_integer("conquer_epochs", 1, "Divide-and-Conquer: final curve epochs trained on all data.")
flags.DEFINE_list("hdml_alphas", ["calibrated"], "HDML methods: hardness temperatures alpha to run, as rows "
                  "\"hdml_npair\" (calibrated) and \"hdml_npair_alpha90\" (alpha = 90, the original's constant).")
flags.DEFINE_list("hdml_generator_inputs", ["single"], "HDML methods: generator inputs to run (\"single\", the "
                  "original's, and/or \"anchor_pair\", rows \"..._anchor_pair\").")
flags.DEFINE_bool("hdml_without", False, "HDML methods: also run each one's exact twin without synthetic negatives "
                  "(hdml_synthetic=False), as rows \"..._without\".")
flags.DEFINE_bool("quick", False, "CI mode: 10 steps, seed 0, one curve point after step 10.")

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")
RANKING = "pddm_ranking"


class _RecallCurve(keras.callbacks.Callback):
    """Held-out R@1 after every epoch (an epoch here is `eval_every` steps), and for HDML the
    epoch's mean synthetic-negative hardness lambda0 (1 = negative unchanged)."""

    def __init__(self, held_out, steps_per_epoch: int) -> None:
        super().__init__()
        self.held_out, self.steps_per_epoch = held_out, steps_per_epoch
        self.points: list[tuple[int, float]] = []
        self.hardness: list[tuple[int, float]] = []

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        step = (epoch + 1) * self.steps_per_epoch
        embeddings, labels = evaluation.embed_dataset(self.model, self.held_out)
        self.points.append((step, evaluation.recall_at_k(embeddings, labels, ks=(1,))["recall@1"]))
        if logs and "lambda0" in logs:
            self.hardness.append((step, float(logs["lambda0"])))


def _runs() -> list[tuple[str, str, dict]]:
    """(row name, method, extra options) of every configuration to run."""
    runs = []
    for method in FLAGS.methods:
        if method.startswith("dc_"):
            runs += [(f"{method}_k{k}", method, {"num_learners": int(k)}) for k in FLAGS.num_learners]
        elif method.startswith("hdml_"):
            for alpha in FLAGS.hdml_alphas:
                for generator_input in FLAGS.hdml_generator_inputs:
                    name = method + ("" if alpha == "calibrated" else f"_alpha{float(alpha):g}") + (
                        "" if generator_input == "single" else f"_{generator_input}")
                    runs.append((name, method, {"hdml_alpha": None if alpha == "calibrated" else float(alpha),
                                                "hdml_generator_input": generator_input}))
            if FLAGS.hdml_without:
                runs.append((f"{method}_without", method, {"hdml_synthetic": False}))
        else:
            runs.append((method, method, {}))
    return runs


def _run(name: str, method: str, options: dict, seed: int, split: data.DatasetSplit, held_out) -> dict:
    keras.utils.set_random_seed(seed)
    size = FLAGS.image_size
    settings = methods.method_options(method, num_classes=split.train.num_classes, alpha=FLAGS.alpha,
                                      beta=FLAGS.beta, embedding_weight=FLAGS.embedding_weight, mining=FLAGS.mining,
                                      **options)
    model = methods.build_model(method, small_convnet(size, split.channels), FLAGS.embedding_dim, **settings)
    model.compile(optimizer=keras.optimizers.Adam(FLAGS.learning_rate))
    train, callbacks = methods.training_pipeline(model, split.train, FLAGS.batch_classes, FLAGS.batch_per_class,
                                                 size, split.channels, seed=seed,
                                                 recluster_every=FLAGS.recluster_every,
                                                 conquer_epochs=FLAGS.conquer_epochs,
                                                 steps_per_epoch=FLAGS.eval_every)
    curve = _RecallCurve(held_out, FLAGS.eval_every)
    curve.set_model(model)
    curve.on_epoch_end(-1)  # step 0: the untrained model
    curve.points[0] = (0, curve.points[0][1])
    start = time.perf_counter()
    model.fit(train, epochs=FLAGS.steps // FLAGS.eval_every, steps_per_epoch=FLAGS.eval_every,
              callbacks=[*callbacks, curve], verbose=0)
    wall = time.perf_counter() - start
    embeddings, labels = evaluation.embed_dataset(model, held_out)
    runs = {name: {**evaluation.evaluate_retrieval(embeddings, labels, seed=seed),
                   "wall_s": wall, "curve": curve.points}}
    if curve.hardness:
        runs[name]["hardness"] = curve.hardness
    for schedule in (c for c in callbacks if isinstance(c, DivideAndConquer)):  # time spent (re-)clustering
        runs[name]["recluster_s"] = float(sum(schedule.timings))
        runs[name]["clusterings"] = len(schedule.timings)
    if isinstance(model, PDDMModel) and method == "pddm_quadruplet":
        # PDDM ranking re-uses the quadruplet model: same training, Euclidean shortlist re-ranked.
        def pair_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return model.pddm((a, b)).numpy()

        runs[RANKING] = {**evaluation.evaluate_retrieval(embeddings, labels, seed=seed, rerank=FLAGS.rerank,
                                                         pair_scores=pair_scores),
                         "wall_s": wall, "curve": []}
        if seed == int(FLAGS.seeds[0]):
            runs[RANKING]["similarity"] = evaluation.pair_similarities(embeddings, labels, pair_scores, seed=seed)
    return runs


def _summarise(results: dict[str, list[dict]]) -> str:
    clustering = any("recluster_s" in runs[0] for runs in results.values())
    timings = ("wall_s", "recluster_s") if clustering else ("wall_s",)
    header = "| method | " + " | ".join(METRICS) + " | wall (s) |" + (" clustering (s) |" if clustering else "")
    rows = [header, "|" + "---|" * (len(METRICS) + 1 + len(timings))]
    for method, runs in results.items():
        cells = []
        for key in (*METRICS, *timings):
            values = np.array([r.get(key, np.nan) for r in runs])
            fmt = "{:.1f} ± {:.1f}" if key in timings else "{:.3f} ± {:.3f}"
            cells.append(fmt.format(values.mean(), values.std()))
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + f"\n\n{len(next(iter(results.values())))} seed(s) per method; mean ± std (population).\n"


def _plots(results: dict[str, list[dict]], similarity: dict | None, out: pathlib.Path) -> dict[str, float]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for method, runs in results.items():
        if not runs[0]["curve"]:
            continue
        steps = [s for s, _ in runs[0]["curve"]]
        ax.plot(steps, np.mean([[r for _, r in run["curve"]] for run in runs], axis=0), marker="o", label=method)
    ax.set(xlabel="training step", ylabel="held-out Recall@1", title="Omniglot, unseen characters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recall_curve.png", dpi=110)
    plt.close(fig)

    hdml = {m: runs for m, runs in results.items() if runs[0].get("hardness")}
    if hdml:
        fig, ax = plt.subplots(figsize=(7, 4))
        for method, runs in hdml.items():
            steps = [s for s, _ in runs[0]["hardness"]]
            ax.plot(steps, np.mean([[h for _, h in run["hardness"]] for run in runs], axis=0), marker="o", label=method)
        ax.set(xlabel="training step", ylabel="mean lambda0 (1 = unchanged negative)",
               title="HDML synthetic-negative hardness (lower = harder)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "hdml_hardness.png", dpi=110)
        plt.close(fig)

    overlaps: dict[str, float] = {}
    if similarity is None:
        return overlaps
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, title in zip(axes, ("score", "euclidean"), ("PDDM score", "-squared Euclidean distance")):
        pos, neg = similarity["positive"][kind], similarity["negative"][kind]
        overlaps[kind] = evaluation.distribution_overlap(pos, neg)
        ax.hist(neg, bins=100, density=True, alpha=0.6, label="negative pairs")
        ax.hist(pos, bins=100, density=True, alpha=0.6, label="positive pairs")
        ax.set(title=f"{title} (overlap {overlaps[kind]:.3f})", xlabel="similarity")
        ax.legend(fontsize=8)
    fig.suptitle("held-out pairs, PDDM+Quadruplet model")
    fig.tight_layout()
    fig.savefig(out / "similarity_hist.png", dpi=110)
    plt.close(fig)
    return overlaps


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.quick:
        FLAGS.steps, FLAGS.eval_every, FLAGS.seeds = 10, 10, ["0"]
    unknown = set(FLAGS.methods) - set(methods.METHODS)
    if unknown:
        raise app.UsageError(f"unknown methods {sorted(unknown)}; choose from {sorted(methods.METHODS)}")
    out = pathlib.Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = data.load_omniglot(test_fraction=0.5, seed=0)  # one split for every method and seed
    # Decoded once: every curve point of every run embeds the same images.
    held_out = data.evaluation_dataset(split.test, FLAGS.image_size, split.channels).cache()
    results: dict[str, list[dict]] = {}
    similarity = None
    configurations = _runs()
    progress = keras.utils.Progbar(len(configurations) * len(FLAGS.seeds), unit_name="run")
    for row, method, options in configurations:
        for seed in map(int, FLAGS.seeds):
            for name, run in _run(row, method, options, seed, split, held_out).items():
                similarity = run.pop("similarity", similarity)
                results.setdefault(name, []).append(run)
            progress.add(1, values=[("R@1", results[row][-1]["recall@1"])])
    table = _summarise(results)
    overlaps = _plots(results, similarity, out)
    if overlaps:
        table += (f"\nOverlap of held-out positive/negative similarity distributions (0 = separated): "
                  f"PDDM score {overlaps['score']:.3f}, Euclidean distance {overlaps['euclidean']:.3f}.\n")
    config = {k: getattr(FLAGS, k) for k in ("steps", "eval_every", "image_size", "embedding_dim",
                                              "batch_classes", "batch_per_class", "learning_rate", "rerank",
                                              "alpha", "beta", "embedding_weight", "mining", "num_learners",
                                              "recluster_every", "conquer_epochs")}
    payload = {"config": {**config, "seeds": FLAGS.seeds}, "runs": results, "overlap": overlaps}
    atomic.write_json(out / "results.json", payload, indent=1)
    atomic.write_text(out / "table.md", table)
    print("\n" + table)


if __name__ == "__main__":
    app.run(main)
