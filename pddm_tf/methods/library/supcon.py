"""supcon: the supervised contrastive loss (`pddm_tf.SupConLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import MINER, XBM_FLAGS, check_xbm, options_of, pair_loss_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "temperature": Setting(float, 0.1, "the temperature t (Khosla et al.: 0.1)", Bound(0, low_open=True)),
    "miner": MINER,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return pair_loss_model(backbone, embedding_dim, pddm_tf.SupConLoss(**options_of(settings, OPTIONS)), settings)


SPEC = register_method(MethodSpec(
    name="supcon",
    summary="The supervised contrastive loss (Khosla et al., NeurIPS 2020).",
    build=build,
    options=OPTIONS,
    flags=XBM_FLAGS,
    check=check_xbm,
))
