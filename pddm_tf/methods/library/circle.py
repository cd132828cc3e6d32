"""circle: the circle loss on cosine similarities (`pddm_tf.CircleLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import MINER, XBM_FLAGS, check_xbm, options_of, pair_loss_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "m": Setting(float, 0.4, "the relaxation margin m (Sun et al.)", Bound(0, 1)),
    "gamma": Setting(float, 80.0, "the scale gamma (Sun et al.; pytorch-metric-learning: 80)", Bound(0, low_open=True)),
    "miner": MINER,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return pair_loss_model(backbone, embedding_dim, pddm_tf.CircleLoss(**options_of(settings, OPTIONS)), settings)


SPEC = register_method(MethodSpec(
    name="circle",
    summary="The circle loss (Sun et al., CVPR 2020) on every pair of the batch.",
    build=build,
    options=OPTIONS,
    flags=XBM_FLAGS,
    check=check_xbm,
))
