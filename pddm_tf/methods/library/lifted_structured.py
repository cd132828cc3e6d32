"""lifted_structured: the lifted structured loss (`pddm_tf.LiftedStructuredLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import DISTANCE, MINER, loss_model, options_of
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "margin": Setting(float, 1.0, "the margin of the negatives' log-sum-exp hinge", Bound(0)),
    "distance": DISTANCE,
    "miner": MINER,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    loss = pddm_tf.LiftedStructuredLoss(**options_of(settings, OPTIONS))
    return loss_model(backbone, embedding_dim, loss, settings)


SPEC = register_method(MethodSpec(
    name="lifted_structured",
    summary="The lifted structured loss (Oh Song et al., CVPR 2016).",
    build=build,
    options=OPTIONS,
))
