"""tuplet_margin: the tuplet margin loss (`pddm_tf.TupletMarginLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import MINER, XBM_FLAGS, check_xbm, options_of, pair_loss_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "margin": Setting(float, 5.73, "the angular slack margin beta in degrees (Yu & Tao: 5.73)",
                      Bound(0, 180, high_open=True)),
    "scale": Setting(float, 64.0, "the scale s (Yu & Tao: 64)", Bound(0, low_open=True)),
    "miner": MINER,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return pair_loss_model(backbone, embedding_dim, pddm_tf.TupletMarginLoss(**options_of(settings, OPTIONS)), settings)


SPEC = register_method(MethodSpec(
    name="tuplet_margin",
    summary="The tuplet margin loss (Yu & Tao, ICCV 2019).",
    build=build,
    options=OPTIONS,
    flags=XBM_FLAGS,
    check=check_xbm,
))
