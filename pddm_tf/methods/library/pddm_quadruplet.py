"""pddm_quadruplet: PDDM and the double-header hinge loss on quadruplets mined by the PDDM score."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.methods.library._shared import PDDM_FLAGS, pddm_model
from pddm_tf.methods.spec import MethodSpec, register_method


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return pddm_model(backbone, embedding_dim, settings, heads=2)


SPEC = register_method(MethodSpec(
    name="pddm_quadruplet",
    summary="PDDM with the double-header hinge loss on hard quadruplets mined by the PDDM score (Huang et "
            "al., NIPS 2016; METHODS.md section 2).",
    build=build,
    flags={**PDDM_FLAGS, "mining_score": "pddm"},
))
