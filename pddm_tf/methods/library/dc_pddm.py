"""dc_pddm: Divide-and-Conquer around the PDDM quadruplet loss (PDDM hard-quadruplet mining on each slice)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import DC_FLAGS, PDDM_FLAGS, check_divide_and_conquer, double_header_loss
from pddm_tf.methods.spec import MethodSpec, register_method


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return pddm_tf.DivideAndConquerModel(backbone, embedding_dim=embedding_dim, num_learners=settings["num_learners"],
                                         loss=double_header_loss(settings), mining_score=settings["mining_score"],
                                         pddm_normalize_inputs=settings["pddm_normalize_inputs"],
                                         dropout=settings["dropout"])


SPEC = register_method(MethodSpec(
    name="dc_pddm",
    summary="Divide-and-Conquer (Sanakoyeu et al., CVPR 2019) around the PDDM quadruplet loss.",
    build=build,
    flags={**DC_FLAGS, **PDDM_FLAGS},
    check=check_divide_and_conquer,
))
