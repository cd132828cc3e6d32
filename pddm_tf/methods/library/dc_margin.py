"""dc_margin: Divide-and-Conquer around the margin loss, with the authors' sampler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import DC_FLAGS, check_divide_and_conquer
from pddm_tf.methods.spec import MethodSpec, register_method


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    # The authors' setting: margin 0.2 around a fixed boundary beta = 1.2 (METHODS.md section 4)
    # and their released sampler, each anchor's closest negatives beyond 0.5 (section 7). It is
    # deterministic, so a resumed run draws the same triplets.
    loss = pddm_tf.MarginLoss(learn_beta=False, miner="closest_beyond_cutoff")
    return pddm_tf.DivideAndConquerModel(backbone, embedding_dim=embedding_dim, num_learners=settings["num_learners"],
                                         loss=loss, dropout=settings["dropout"])


SPEC = register_method(MethodSpec(
    name="dc_margin",
    summary="Divide-and-Conquer (Sanakoyeu et al., CVPR 2019) around the margin loss (fixed beta, the authors' "
            "closest-beyond-cutoff negatives).",
    build=build,
    flags=DC_FLAGS,
    check=check_divide_and_conquer,
))
