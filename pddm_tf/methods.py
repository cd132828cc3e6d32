"""Named training methods: one place that turns a method name into a model to `compile` and `fit`.

Used by `pddm-tf train --method=NAME` and by the benchmarks, so every method is built the same
way around the same backbone and embedding size.
"""

from __future__ import annotations

from typing import Any, Callable

import keras

from pddm_tf import losses
from pddm_tf.layers import PDDM
from pddm_tf.models import EmbeddingModel, MetricLossModel, PDDMModel


def _pddm(heads: int, default_mining_score: str) -> Callable[..., EmbeddingModel]:
    def build(backbone: keras.Model, embedding_dim: int, alpha: float = 0.5, beta: float = 0.5,
              embedding_weight: float = 0.5, mining: str = "per_pair", mining_score: str | None = None,
              **_: Any) -> EmbeddingModel:
        loss = losses.DoubleHeaderHingeLoss(alpha=alpha, beta=beta, embedding_weight=embedding_weight,
                                            heads=heads, mining=mining)
        return PDDMModel(backbone, embedding_dim=embedding_dim, pddm=PDDM(name="pddm"), loss=loss,
                         mining_score=mining_score or default_mining_score)

    return build


def _baseline(make_loss: Callable[[], keras.losses.Loss]) -> Callable[..., EmbeddingModel]:
    def build(backbone: keras.Model, embedding_dim: int, **_: Any) -> EmbeddingModel:
        return MetricLossModel(backbone, make_loss(), embedding_dim=embedding_dim)

    return build


#: method name -> builder(backbone, embedding_dim, **options) -> model.
METHODS: dict[str, Callable[..., EmbeddingModel]] = {
    "pddm_quadruplet": _pddm(heads=2, default_mining_score="pddm"),
    "pddm_triplet": _pddm(heads=1, default_mining_score="pddm"),
    "euclidean_quadruplet": _pddm(heads=2, default_mining_score="euclidean"),
    "contrastive": _baseline(lambda: losses.ContrastiveLoss()),
    "triplet_semihard": _baseline(lambda: losses.TripletLoss(mining="semi_hard")),
    "triplet_batchhard": _baseline(lambda: losses.TripletLoss(mining="batch_hard")),
    "lifted_structured": _baseline(lambda: losses.LiftedStructuredLoss()),
    "npair": _baseline(lambda: losses.NPairLoss()),
    "margin": _baseline(lambda: losses.MarginLoss()),
    "multi_similarity": _baseline(lambda: losses.MultiSimilarityLoss()),
}


def build_model(method: str, backbone: keras.Model, embedding_dim: int = 64, **options: Any) -> EmbeddingModel:
    """The model of a named method around `backbone`, not yet compiled.

    Args:
      method: a key of `METHODS`: "pddm_quadruplet", "pddm_triplet" (PDDM with one negative head),
        "euclidean_quadruplet" (the ablation: quadruplets mined by Euclidean distance), or a
        baseline loss ("contrastive", "triplet_semihard", "triplet_batchhard", "lifted_structured",
        "npair", "margin", "multi_similarity").
      backbone: images -> features.
      embedding_dim: d.
      options: PDDM settings (alpha, beta, embedding_weight, mining, mining_score); ignored by
        baselines.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    return METHODS[method](backbone, embedding_dim, **options)
