"""Generalisation to unseen classes (the PDDM paper's third claim): train on seen classes, recognise unseen ones.

Protocol (METHODS.md section 2, "Transfer and zero-shot"; the paper's exact protocols were not
recovered, this is the standard unseen-class one):

1. Split the classes into seen and unseen. ImageNet 2012 (`--dataset=imagenet2012`, TFDS, manual
   download, see `pddm_tf.data.tfds_loaders`): the 1000 classes are shuffled with `--seed` and
   `--unseen_fraction` (default 0.2: 800 seen / 200 unseen, the size of the ImageNet 2010
   zero-shot splits) are held out; training uses the seen classes' "train" images, the protocol
   the unseen classes' "validation" images (50 each). The embedded Omniglot data
   (`--dataset=omniglot`) is split by alphabet (`load_omniglot(split_by="alphabet")`: whole
   alphabets unseen, taken in a seeded order until `--unseen_fraction` of the characters);
   `folder:PATH` and the other TFDS names use their loader's class split.
2. Train the embedding on the seen classes with any method of `pddm_tf.methods.METHODS`
   (`--method`, default PDDM quadruplet) for `--epochs` x `--steps` steps; `--recipe` takes the
   training settings of a `pddm_tf.methods.recipes` recipe (flags given on the command line win).
3. Embed the unseen images and report flat hit@k (k = 1, 2, 5, 10; "flat": the true class among
   the k best-ranked unseen classes, no credit for related classes) by:
   * nearest class prototype: each unseen class is the mean of n labelled embeddings (n = 1, 5):
     a support set of n images per class is drawn with `--seed`, the other images of those
     classes are the queries, ranked against every class's prototype by squared Euclidean
     distance (prototypes are plain means, not re-normalised). Classes with fewer than n + 1
     images take no part for that n. n = "all": leave-one-out, each query against its own
     class's mean over all its other images and the other classes' means over all their images
     (classes with at least 2 images).
   * a semantic space (`--semantic_vectors`, per-class vectors such as word embeddings): a linear
     map W from embeddings to the semantic space is learned on seen-class images by ridge
     regression in closed form, W = (X^T X + lambda I)^-1 X^T T (X: embeddings with a constant 1
     column whose weight is not penalised, T: each image's class vector, lambda =
     `--ridge_lambda`); an unseen image is mapped by W and its unseen classes ranked by cosine
     similarity to their vectors. This is DeViSE-style (a linear projection of the visual
     embedding into the semantic space, nearest class vector), with DeViSE's hinge rank loss
     replaced by the ridge closed form; it is not ConSE, which needs a seen-class classifier.
4. Print a table and write `results.json` and `embeddings.npz` (unseen embeddings, labels, class
   names, the support sets; the seen embeddings used for the map) into `--out_dir`.

    python examples/zero_shot_imagenet.py --dataset=omniglot --steps=300 --out_dir=zero_shot/omniglot
    python examples/zero_shot_imagenet.py --data_dir=/data/tfds --download --recipe=pddm_cub \
        --semantic_vectors=synset_vectors.json --out_dir=zero_shot/imagenet
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np
from absl import app, flags

KS = (1, 2, 5, 10)
SHOTS = ("1", "5", "all")
# Recipe keys this example applies; the others (augmentation, evaluation schedule...) concern `pddm-tf train`.
_RECIPE_KEYS = ("dataset", "method", "backbone", "weights", "freeze_batchnorm", "image_size", "embedding_dim",
                "batch_classes", "batch_per_class", "learning_rate", "alpha", "beta", "embedding_weight", "epochs",
                "small_classes")


# --------------------------------------------------------------------------- protocol (numpy)


def support_sets(labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded n-shot support sets: (support [c * n] indices, queries [q] indices) into `labels`.

    For each class (in increasing label order) with at least n + 1 images, a permutation of its
    rows by `np.random.default_rng(seed)` puts n in the support set and the rest in the queries;
    smaller classes take no part. Both outputs are sorted.
    """
    rng = np.random.default_rng(seed)
    support, queries = [], []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) < n + 1:
            continue
        rows = rng.permutation(rows)
        support.append(rows[:n])
        queries.append(rows[n:])
    if not support:
        raise ValueError(f"no unseen class has {n + 1} images: {n}-shot prototypes need one more image as query")
    return np.sort(np.concatenate(support)), np.sort(np.concatenate(queries))


def hit_at_k(scores: np.ndarray, truth: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Flat hit@k: scores [q, c] (higher = better), truth [q] column of the true class.

    The true class is hit at k when fewer than k classes score strictly higher than it or equal
    to it with a lower column (a stable ranking); k beyond c counts every query as a hit.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.argmax(order == truth[:, None], axis=1)  # 0-based rank of the true class
    return {f"hit@{k}": float(np.mean(rank < k)) for k in ks}


def prototype_hits(embeddings: np.ndarray, labels: np.ndarray, shots: str, seed: int,
                   ks: tuple[int, ...] = KS) -> tuple[dict[str, float], np.ndarray | None]:
    """hit@k of nearest-prototype classification of unseen images, n = `shots` ("1", "5" or "all").

    Args:
      embeddings: [m, d] unseen-class embeddings; labels: [m] their classes.

    Returns:
      ({"hit@k": ..., "queries": q, "classes": c}, support indices [c * n], None for "all").
    """
    embeddings = np.asarray(embeddings, np.float64)
    if shots == "all":
        classes, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
        keep = counts >= 2
        rows = np.flatnonzero(keep[class_of])
        # Class sums over all rows, then each query's own class without itself (leave-one-out).
        sums = np.zeros((len(classes), embeddings.shape[1]))
        np.add.at(sums, class_of, embeddings)
        prototypes = sums / counts[:, None]
        column = np.cumsum(keep) - 1  # class index -> column among the kept classes
        distances = _squared_distances(embeddings[rows], prototypes[keep])  # [q, c]
        own = (sums[class_of[rows]] - embeddings[rows]) / (counts[class_of[rows]] - 1)[:, None]
        truth = column[class_of[rows]]
        distances[np.arange(len(rows)), truth] = np.sum((embeddings[rows] - own) ** 2, axis=1)
        support = None
    else:
        support, rows = support_sets(labels, int(shots), seed)
        classes, truth_of_support = np.unique(labels[support], return_inverse=True)
        prototypes = np.stack([embeddings[support][truth_of_support == c].mean(axis=0) for c in range(len(classes))])
        distances = _squared_distances(embeddings[rows], prototypes)
        truth = np.searchsorted(classes, labels[rows])
    metrics = hit_at_k(-distances, truth, ks)
    metrics.update(queries=len(rows), classes=int(distances.shape[1]))
    return metrics, support


def fit_ridge(features: np.ndarray, targets: np.ndarray, lam: float) -> np.ndarray:
    """Closed-form ridge regression with an unpenalised bias: [d + 1, s] weights (last row = bias).

    W = argmin ||[X 1] W - T||^2 + lam ||W[:d]||^2 = ([X 1]^T [X 1] + lam diag(1..1, 0))^-1 [X 1]^T T.
    """
    x = np.hstack([np.asarray(features, np.float64), np.ones((len(features), 1))])
    penalty = lam * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ np.asarray(targets, np.float64))


def semantic_hits(seen_embeddings: np.ndarray, seen_vectors: np.ndarray, unseen_embeddings: np.ndarray,
                  unseen_labels: np.ndarray, class_vectors: np.ndarray, lam: float,
                  ks: tuple[int, ...] = KS) -> dict[str, float]:
    """hit@k of the DeViSE-style linear map: ridge from seen embeddings [m, d] to their class vectors [m, s],
    unseen embeddings [q, d] mapped and ranked against the unseen class vectors [c, s] by cosine similarity;
    unseen_labels [q] index rows of `class_vectors`."""
    weights = fit_ridge(seen_embeddings, seen_vectors, lam)
    mapped = np.hstack([np.asarray(unseen_embeddings, np.float64), np.ones((len(unseen_embeddings), 1))]) @ weights
    scores = _unit(mapped) @ _unit(np.asarray(class_vectors, np.float64)).T
    metrics = hit_at_k(scores, np.asarray(unseen_labels), ks)
    metrics.update(queries=len(unseen_labels), classes=len(class_vectors))
    return metrics


def load_semantic_vectors(path: str, class_names: list[str]) -> np.ndarray:
    """[len(class_names), s] vectors for `class_names` from a .json {class name: [s floats]} or a .npy
    [C, s] whose rows follow the sorted class names of the whole dataset (seen and unseen together)."""
    if path.endswith(".json"):
        table = json.loads(pathlib.Path(path).read_text())
        missing = [name for name in class_names if name not in table]
        if missing:
            raise ValueError(f"{path}: no vector for {len(missing)} classes, e.g. {missing[:3]}")
        return np.array([table[name] for name in class_names], np.float64)
    vectors = np.load(path)
    names = sorted(class_names)
    if vectors.ndim != 2 or len(vectors) != len(names):
        raise ValueError(f"{path}: expected [{len(names)}, s] vectors (one per class, sorted names), got "
                         f"{vectors.shape}")
    return vectors[[names.index(name) for name in class_names]].astype(np.float64)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[p, d], [c, d] -> [p, c] squared Euclidean distances (float64, direct differences)."""
    return np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- flags and run


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command-line flags (in a function, so importing this module defines none)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("dataset", "imagenet2012", "imagenet2012 (TFDS, manual download), omniglot (embedded, "
                        "split by alphabet), folder:PATH or another pddm_tf.data.load_dataset name.", **fv)
    flags.DEFINE_float("unseen_fraction", 0.2, "Fraction of the classes held out as unseen.", **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", **fv)
    flags.DEFINE_string("cache_dir", None, "Where TFDS images are extracted (default <data_dir>/pddm_tf_files).", **fv)
    flags.DEFINE_string("manual_dir", None, "TFDS manual download directory (ImageNet's tar files).", **fv)
    flags.DEFINE_bool("download", False, "Let TFDS prepare the dataset (from the manual files for ImageNet).", **fv)
    flags.DEFINE_string("recipe", None, "A pddm_tf.methods.recipes recipe for the training settings.", **fv)
    flags.DEFINE_string("method", "pddm_quadruplet", "A method of pddm_tf.methods.METHODS.", **fv)
    flags.DEFINE_string("backbone", "small_convnet", "A pddm_tf.backbones.BACKBONES name.", **fv)
    flags.DEFINE_string("weights", None, "Backbone weights: none, 'imagenet' or a weights file.", **fv)
    flags.DEFINE_bool("freeze_batchnorm", False, "Keep the backbone's BatchNormalization frozen.", **fv)
    flags.DEFINE_integer("backbone_width", 64, "small_convnet filters per block.", **fv)
    flags.DEFINE_integer("image_size", 32, "Images are resized to image_size x image_size.", **fv)
    flags.DEFINE_integer("channels", None, "Decoding channels (default: the dataset's).", **fv)
    flags.DEFINE_integer("embedding_dim", 64, "Embedding size d.", **fv)
    flags.DEFINE_integer("batch_classes", 16, "P: classes per batch.", **fv)
    flags.DEFINE_integer("batch_per_class", 4, "K: images per class in a batch.", **fv)
    flags.DEFINE_enum("small_classes", "error", ["error", "cycle"], "Classes with fewer than K images.", **fv)
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", **fv)
    flags.DEFINE_float("alpha", 1.0, "PDDM score margin.", **fv)
    flags.DEFINE_float("beta", 0.5, "Embedding distance margin.", **fv)
    flags.DEFINE_float("embedding_weight", 0.5, "lambda, the weight of the embedding loss.", **fv)
    flags.DEFINE_integer("epochs", 1, "Training epochs.", **fv)
    flags.DEFINE_integer("steps", 300, "Gradient steps per epoch (0 = one pass of the seen classes).", **fv)
    flags.DEFINE_integer("seed", 0, "Seed of the class split, training and support sets.", **fv)
    flags.DEFINE_integer("eval_batch_size", 256, "Batch size for embedding.", **fv)
    flags.DEFINE_string("semantic_vectors", None, "Per-class vectors: .json {class: [..]} or .npy [C, s] in sorted "
                        "class-name order (seen and unseen).", **fv)
    flags.DEFINE_float("ridge_lambda", 1.0, "Ridge penalty of the linear map to the semantic space.", **fv)
    flags.DEFINE_integer("semantic_per_class", 50, "Seen images per class (seeded) to fit the linear map.", **fv)
    flags.DEFINE_string("out_dir", None, "Write results.json and embeddings.npz here.", **fv)


def apply_recipe(flag_values: flags.FlagValues) -> dict[str, Any]:
    """Sets the flags of `--recipe` that the command line did not give; returns the values applied.

    Ignored when `pddm_tf.methods.recipes` is absent. A recipe's `steps_per_epoch` maps to `--steps`.
    """
    if not flag_values.recipe:
        return {}
    try:
        from pddm_tf.methods import recipes
    except ImportError:
        print(f"--recipe={flag_values.recipe} ignored: this pddm_tf has no recipes module")
        return {}
    recipe = recipes.get_recipe(flag_values.recipe) if hasattr(recipes, "get_recipe") else recipes.RECIPES[
        flag_values.recipe]
    settings = dict(recipe.flags)
    if "steps_per_epoch" in settings:
        settings["steps"] = settings.pop("steps_per_epoch")
    applied = {}
    for key, value in settings.items():
        if (key in _RECIPE_KEYS or key == "steps") and not flag_values[key].present:
            flag_values[key].value = value
            applied[key] = value
    return applied


def _config(f: flags.FlagValues):
    """The run as a `pddm_tf.training.TrainConfig`: seen classes train, unseen ones are held out
    (whole alphabets for Omniglot); no backup, no evaluation inside the library (this script's own
    protocol follows)."""
    from pddm_tf.methods import METHOD_SPECS
    from pddm_tf.training import TrainConfig

    weights = "none" if (f.weights or "none").lower() == "none" else f.weights
    # The PDDM margins go to the methods that use them: a flag a method does not use is refused.
    pddm = {name: f[name].value for name in ("alpha", "beta", "embedding_weight")
            if name in METHOD_SPECS[f.method].flags}
    return TrainConfig.from_flags(
        dataset=f.dataset, data_dir=f.data_dir, cache_dir=f.cache_dir, manual_dir=f.manual_dir, download=f.download,
        test_fraction=f.unseen_fraction, split_by="alphabet" if f.dataset == "omniglot" else "character",
        channels=f.channels if f.dataset != "omniglot" else None, seed=f.seed, image_size=f.image_size,
        method=f.method, backbone=f.backbone, weights=weights, freeze_batchnorm=f.freeze_batchnorm,
        backbone_width=f.backbone_width, embedding_dim=f.embedding_dim, batch_classes=f.batch_classes,
        batch_per_class=f.batch_per_class, small_classes=f.small_classes, learning_rate=f.learning_rate,
        # Upright characters only: a rotated character has no semantic vector (the CLI's omniglot defaults rotate).
        rotations=False, affine=False,
        # Adam at a constant rate, as this protocol was measured (the CLI's defaults warm up and decay).
        lr_schedule="constant", warmup_fraction=0.0, weight_decay=0.0, epochs=f.epochs, steps_per_epoch=f.steps,
        eval_batch_size=f.eval_batch_size, episodes=(), backup=False, **pddm)


def _load_split(f: flags.FlagValues):
    """The seen (train) / unseen (test) `DatasetSplit` of `--dataset` and its channel count."""
    from pddm_tf.training import load_split

    split, channels = load_split(_config(f))
    if split.test is None:
        raise ValueError("--unseen_fraction must hold out some classes")
    return split, channels


def _train(f: flags.FlagValues):
    """The model of `--method`, trained on the seen classes by `pddm_tf.training.fit`; returns it."""
    from pddm_tf.training import fit

    return fit(_config(f)).model


def _embed(model, files, image_size: int, channels: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    from pddm_tf import data, evaluation

    return evaluation.embed_dataset(model, data.evaluation_dataset(files, image_size, channels, batch_size))


def _subsample(files, per_class: int, seed: int):
    """At most `per_class` seeded images of each class of `files` (an `ImageFiles`)."""
    from pddm_tf import data

    rng = np.random.default_rng(seed)
    rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(files.labels == c))[:per_class]
                                   for c in range(files.num_classes)]))
    return data.ImageFiles(files.paths[rows], files.labels[rows], files.class_names, files.rotations[rows])


def format_results(results: dict[str, Any]) -> str:
    """The hit@k table: one row per prototype shot count and for the semantic map."""
    header = f"{'unseen-class protocol':<34} | " + " | ".join(f"hit@{k:<3}" for k in KS) + " | queries | classes"
    lines = [header, "-" * len(header)]
    rows = [(f"nearest prototype, n = {n}", results["prototype"][n]) for n in SHOTS if n in results["prototype"]]
    if "semantic" in results:
        rows.append(("semantic map (ridge, DeViSE-style)", results["semantic"]))
    for name, m in rows:
        lines.append(f"{name:<34} | " + " | ".join(f"{m[f'hit@{k}']:<7.4f}" for k in KS)
                     + f" | {m['queries']:>7} | {m['classes']:>7}")
    return "\n".join(lines)


def run(f: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """The whole protocol per the flags; returns the results written to results.json."""
    from pddm_tf.methods import METHODS

    applied = apply_recipe(f)
    if f.method not in METHODS:
        raise app.UsageError(f"--method={f.method} is not one of {sorted(METHODS)}")
    split, channels = _load_split(f)
    seen, unseen = split.train, split.test
    print(f"{f.dataset}: {seen.num_classes} seen classes ({len(seen)} images), "
          f"{unseen.num_classes} unseen classes ({len(unseen)} images)")
    model = _train(f)
    embeddings, labels = _embed(model, unseen, f.image_size, channels, f.eval_batch_size)
    results: dict[str, Any] = {
        "dataset": f.dataset, "method": f.method, "recipe": f.recipe, "recipe_applied": applied, "seed": f.seed,
        "epochs": f.epochs, "steps": f.steps, "image_size": f.image_size, "embedding_dim": f.embedding_dim,
        "seen_classes": seen.num_classes, "unseen_classes": unseen.num_classes, "unseen_images": len(unseen),
        "prototype": {}, "distance": "squared euclidean to class means; ties to the lower class index",
    }
    arrays: dict[str, np.ndarray] = {"unseen_embeddings": embeddings, "unseen_labels": labels,
                                     "unseen_class_names": np.array(unseen.class_names)}
    for n in SHOTS:
        try:
            metrics, support = prototype_hits(embeddings, labels, n, f.seed)
        except ValueError as error:  # e.g. classes too small for 5 shots
            print(f"n = {n}: skipped ({error})")
            continue
        results["prototype"][n] = metrics
        if support is not None:
            arrays[f"support_{n}"] = support
    if f.semantic_vectors:
        seen_files = _subsample(seen, f.semantic_per_class, f.seed)
        seen_embeddings, seen_labels = _embed(model, seen_files, f.image_size, channels, f.eval_batch_size)
        seen_vectors = load_semantic_vectors(f.semantic_vectors, list(seen.class_names))
        unseen_vectors = load_semantic_vectors(f.semantic_vectors, list(unseen.class_names))
        results["semantic"] = semantic_hits(seen_embeddings, seen_vectors[seen_labels], embeddings, labels,
                                            unseen_vectors, f.ridge_lambda)
        results["semantic"].update(ridge_lambda=f.ridge_lambda, seen_images=len(seen_labels),
                                   variant="DeViSE-style linear map, ridge closed form, cosine ranking")
        arrays.update(seen_embeddings=seen_embeddings, seen_labels=seen_labels,
                      seen_class_names=np.array(seen.class_names))
    print("\n" + format_results(results))
    if f.out_dir:
        from pddm_tf import atomic

        out = pathlib.Path(f.out_dir)
        with atomic.replacing(out / "embeddings.npz", suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
        atomic.write_json(out / "results.json", results, indent=2, sort_keys=True)
        print(f"\nresults and embeddings written to {out}")
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    run()


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    app.run(main)
