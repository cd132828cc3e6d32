"""euclidean_quadruplet: the PDDM quadruplet loss on quadruplets mined by Euclidean distance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.methods.library._shared import PDDM_FLAGS, pddm_model
from pddm_tf.methods.spec import MethodSpec, register_method


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return pddm_model(backbone, embedding_dim, settings, heads=2)


SPEC = register_method(MethodSpec(
    name="euclidean_quadruplet",
    summary="The PDDM quadruplet loss with quadruplets mined by Euclidean distance (the paper's ablation).",
    build=build,
    flags={**PDDM_FLAGS, "mining_score": "euclidean"},
))
