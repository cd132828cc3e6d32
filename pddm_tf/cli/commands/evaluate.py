"""`pddm-tf evaluate`: evaluate an exported SavedModel on a dataset's held-out classes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from absl import flags

from pddm_tf.cli import settings
from pddm_tf.cli.command import Command, register_command
from pddm_tf.methods.spec import GENERAL_FLAGS
from pddm_tf.options import ConfigError
from pddm_tf.training import config_checks

flags.DEFINE_string("model_dir", None, "evaluate: a SavedModel version folder, or a base folder (latest version).")
flags.DEFINE_string("plots", None, "evaluate: write PNG pictures of the result into this folder: a retrieval grid, "
                    "the positive/negative pair-distance histogram, a t-SNE map and the Recall@K curve "
                    "(needs matplotlib: pip install \"pddm-tf[plots]\").")

FLAGS = flags.FLAGS


def check(values: Mapping[str, Any]) -> None:
    if not values.get("model_dir"):
        raise ConfigError("evaluate needs --model_dir (a SavedModel version folder, or its base folder)")
    config_checks.check_input(values, "model_dir")
    config = settings.train_config(values)
    given = config.flag_values()
    for flag in ("test_fraction", "seed", "eval_batch_size", "num_episodes", "max_image_pixels", "split_by"):
        settings.config_module.FLAGS[flag][2].parse(f"--{flag}", given[flag])
    config_checks.check_train_values({"episodes": config.run.evaluation.episodes, "dataset": config.data.dataset})
    rerank = values.get("rerank")
    if rerank is not None:
        GENERAL_FLAGS["rerank"].parse("--rerank", rerank)
    config_checks.check_output_file(values, "json")
    config_checks.check_output_dir(values, "plots")


def run() -> dict[str, float]:
    # TensorFlow is imported at the CLI edge only: `pddm-tf --help` and refused flags must not pay for it.
    import tensorflow as tf

    from pddm_tf import data, evaluation, progress
    from pddm_tf.data import transforms
    from pddm_tf.export import load_saved_model, saved_model_geometry
    from pddm_tf.training import run as training_run

    config = settings.train_config()
    rerank = FLAGS.rerank or 0
    with training_run.pixel_limit(config.data.images.max_pixels):
        model_dir, signatures = load_saved_model(FLAGS.model_dir)
        embed = signatures["embed_pixels"]
        pair_scores = None
        if rerank > 0:
            if "pddm_similarity" not in signatures:
                raise ConfigError(f"--rerank={rerank} re-ranks by a learned PDDM score, but {model_dir} was exported "
                                  "from a model without a PDDM unit (no pddm_similarity signature)")
            similarity = signatures["pddm_similarity"]

            def pair_scores(a, b):
                return similarity(embeddings_a=tf.constant(a), embeddings_b=tf.constant(b))["scores"].numpy()

        size, channels = saved_model_geometry(model_dir)
        split, _ = training_run.load_split(config, rotate_training=False)
        files = split.test if split.test is not None else split.train
        transform = transforms.eval_transform(size) if config.data.images.augment else None
        pixels = data.evaluation_dataset(files, size, channels, config.run.evaluation.batch_size, transform=transform)
        batches = progress.bar(pixels, total=-(-len(files) // config.run.evaluation.batch_size), desc="embedding",
                               unit="batch")
        embeddings = tf.concat([embed(pixels=x)["embeddings"] for x, _ in batches], axis=0).numpy()
        metrics = evaluation.evaluate_retrieval(embeddings, files.labels, seed=config.run.seed, rerank=rerank,
                                                pair_scores=pair_scores)
        metrics.update(training_run.few_shot_metrics(config, embeddings, files))
        training_run.report(metrics, f"{model_dir} on {config.data.dataset} ({files.num_classes} classes, "
                            f"{len(files)} images)", config.run.evaluation.json)
        if FLAGS.plots:
            from pddm_tf.evaluation import visualize  # matplotlib, an optional dependency

            written = visualize.save_plots(FLAGS.plots, embeddings, files.labels,
                                           visualize.load_file_images(files, size, channels, transform),
                                           files.class_names, seed=config.run.seed,
                                           progress=lambda names: progress.bar(names, desc="plots", unit="plot"))
            print(f"plots written to {FLAGS.plots}: {', '.join(os.path.basename(p) for p in written.values())}")
    return metrics


COMMAND = register_command(Command(name="evaluate", summary="evaluate an exported SavedModel on a dataset's "
                                   "held-out classes", run=run, check=check))
