"""npair: the multi-class N-pair loss (`pddm_tf.NPairLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import loss_model, options_of
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {"l2_reg": Setting(float, 0.0, "weight of the embeddings' L2 regulariser", Bound(0))}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return loss_model(backbone, embedding_dim, pddm_tf.NPairLoss(**options_of(settings, OPTIONS)), settings)


SPEC = register_method(MethodSpec(
    name="npair",
    summary="The multi-class N-pair loss (Sohn, NIPS 2016).",
    build=build,
    options=OPTIONS,
))
