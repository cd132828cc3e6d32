"""pddm_triplet: PDDM with one negative head (triplets), mined by the PDDM score."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.methods.library._shared import PDDM_FLAGS, pddm_model
from pddm_tf.methods.spec import MethodSpec, register_method


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return pddm_model(backbone, embedding_dim, settings, heads=1)


SPEC = register_method(MethodSpec(
    name="pddm_triplet",
    summary="PDDM with one negative head (triplets), mined by the PDDM score.",
    build=build,
    flags={**PDDM_FLAGS, "mining_score": "pddm"},
))
