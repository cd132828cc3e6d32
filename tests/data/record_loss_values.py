"""Records every embedding loss's value and gradient on fixed inputs, at its default reducer and distance.

Run once on the pre-contract code (commit 44f8a2c) to write `loss_values_44f8a2c.npz`; the test
`tests/test_loss_values_recorded.py` re-runs the same cases on today's code and asserts equal values
(issue 30 item 8: the losses' values at their default reducers equal those before the contract).

    cd <repo> && CUDA_VISIBLE_DEVICES= python tests/data/record_loss_values.py

The cases only use the entry points that the contract keeps with the same meaning: the constructors
(with the keyword arguments that keep working), `loss(labels, embeddings)` and the `from_embeddings`
methods HDML calls. A case is a function of the fixed inputs returning (loss, [tensors whose gradient
is recorded]).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "loss_values_44f8a2c.npz"


def fixed_inputs() -> dict[str, np.ndarray]:
    """12 samples of 4 classes (3 each) in 8 dimensions, unit and raw, a symmetric score matrix, and
    triplets of synthetic rows for the `from_embeddings` paths."""
    rng = np.random.default_rng(20261207)
    raw = rng.normal(size=(12, 8)).astype(np.float32)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 3).astype(np.int32)
    scores = rng.normal(size=(12, 12)).astype(np.float32)
    scores = 0.5 * (scores + scores.T)
    rows = rng.normal(size=(3, 9, 8)).astype(np.float32)  # anchor, positive, candidate rows of 9 = 3^2
    return {"raw": raw, "unit": unit, "labels": labels, "scores": scores, "rows": rows}


Case = Callable[[dict[str, tf.Tensor]], tuple[tf.Tensor, list[tf.Tensor]]]


def cases() -> dict[str, Case]:
    """Name -> case. Imports pddm_tf here so that the module can be read without TensorFlow work."""
    import pddm_tf as p  # noqa: PLC0415 - the recorder runs against whichever checkout is first on the path

    def on_batch(make_loss: Callable[[], object], key: str = "unit") -> Case:
        def case(x: dict[str, tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
            return make_loss()(x["labels"], x[key]), [x[key]]  # type: ignore[operator]
        return case

    def double_header_with_scores(**kwargs: object) -> Case:
        def case(x: dict[str, tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
            loss = p.DoubleHeaderHingeLoss(**kwargs)
            return loss(x["labels"], {"embeddings": x["unit"], "scores": x["scores"]}), [x["unit"], x["scores"]]
        return case

    def triplet_rows(x: dict[str, tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        a, pos, n = tf.unstack(x["rows"])
        return p.TripletLoss().from_embeddings(a, pos, n), [x["rows"]]

    def npair_rows(x: dict[str, tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        a, pos, c = tf.unstack(x["rows"])
        return p.NPairLoss().from_embeddings(a, pos, c, 3), [x["rows"]]

    def double_header_rows(x: dict[str, tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        # 9 rows do not split in two halves: use the first 8 (q = 4), with scores from the score matrix.
        a, pos, n = (r[:8] for r in tf.unstack(x["rows"]))
        s_ap = tf.concat([x["scores"][0, :4], x["scores"][0, :4]], 0)
        s_an = x["scores"][1, :8]
        terms = p.DoubleHeaderHingeLoss().from_embeddings(a, pos, n, 4, s_ap, s_an)
        return terms.total, [x["rows"], x["scores"]]

    return {
        "contrastive": on_batch(p.ContrastiveLoss),
        "contrastive_raw": on_batch(p.ContrastiveLoss, "raw"),
        "contrastive_cosine": on_batch(lambda: p.ContrastiveLoss(distance="cosine")),
        "contrastive_batch_hard": on_batch(lambda: p.ContrastiveLoss(miner="batch_hard")),
        "lifted": on_batch(p.LiftedStructuredLoss),
        "lifted_raw": on_batch(p.LiftedStructuredLoss, "raw"),
        "lifted_semi_hard": on_batch(lambda: p.LiftedStructuredLoss(miner="semi_hard")),
        "margin_seeded": on_batch(lambda: p.MarginLoss(miner=p.DistanceWeightedMiner(seed=0))),
        "margin_cutoff": on_batch(lambda: p.MarginLoss(miner="closest_beyond_cutoff")),
        "margin_cutoff_per_class": on_batch(lambda: p.MarginLoss(miner="closest_beyond_cutoff", num_classes=4,
                                                                 nu=0.1)),
        "multi_similarity": on_batch(p.MultiSimilarityLoss),
        "multi_similarity_raw": on_batch(p.MultiSimilarityLoss, "raw"),
        "multi_similarity_batch_hard": on_batch(lambda: p.MultiSimilarityLoss(miner="batch_hard")),
        "npair": on_batch(p.NPairLoss),
        "npair_raw_l2": on_batch(lambda: p.NPairLoss(l2_reg=0.002), "raw"),
        "triplet": on_batch(p.TripletLoss),
        "triplet_raw": on_batch(p.TripletLoss, "raw"),
        "triplet_batch_hard": on_batch(lambda: p.TripletLoss(miner="batch_hard")),
        "triplet_squared": on_batch(lambda: p.TripletLoss(distance="squared_euclidean")),
        "double_header": on_batch(p.DoubleHeaderHingeLoss),
        "double_header_scores": double_header_with_scores(),
        "double_header_scores_hardest": double_header_with_scores(mining="hardest"),
        "double_header_scores_one_head": double_header_with_scores(heads=1),
        "triplet_rows": triplet_rows,
        "npair_rows": npair_rows,
        "double_header_rows": double_header_rows,
    }


def evaluate(case: Case, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The case's loss and the gradients of its inputs, as numpy."""
    tensors = {key: tf.constant(value) for key, value in inputs.items()}
    with tf.GradientTape(persistent=True) as tape:
        for value in tensors.values():
            if value.dtype.is_floating:
                tape.watch(value)
        loss, sources = case(tensors)
    gradients = tape.gradient(loss, sources)
    return loss.numpy(), [np.zeros(s.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy()
                          for s, g in zip(sources, gradients, strict=True)]


def main() -> int:
    inputs = fixed_inputs()
    record: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name, case in cases().items():
            value, gradients = evaluate(case, inputs)
            record[f"{name}/value"] = value
            for number, gradient in enumerate(gradients):
                record[f"{name}/gradient{number}"] = gradient
            print(f"{name:32s} {float(value):.6f}")
    np.savez(OUTPUT, **record)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
