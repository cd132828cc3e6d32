"""margin: the margin loss with distance-weighted sampling (`pddm_tf.MarginLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import loss_model, options_of
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "alpha": Setting(float, 0.2, "the margin around the boundary beta", Bound(0)),
    "beta": Setting(float, 1.2, "the boundary between positive and negative distances (initial value if learnt)"),
    "learn_beta": Setting(bool, True, "learn beta"),
    "num_classes": Setting(int, None, "one beta per class (None: one for all)", Bound(1), optional=True),
    "nu": Setting(float, 0.0, "weight of the beta regulariser", Bound(0)),
    # Seeded, and given by name so that every model gets its own sampler: one shared instance would
    # let training one model move the draws of every other built in the process.
    "miner": Setting((str, dict), {"name": "distance_weighted", "config": {"seed": 0}},
                     "the sampler: a name of pddm_tf.miners.MINERS or {\"name\": ..., \"config\": {...}}"),
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return loss_model(backbone, embedding_dim, pddm_tf.MarginLoss(**options_of(settings, OPTIONS)), settings)


SPEC = register_method(MethodSpec(
    name="margin",
    summary="The margin loss with distance-weighted negatives (Wu et al., ICCV 2017).",
    build=build,
    options=OPTIONS,
))
