"""ntxent: NT-Xent (InfoNCE) on labelled pairs (`pddm_tf.NTXentLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import MINER, XBM_FLAGS, check_xbm, options_of, pair_loss_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "temperature": Setting(float, 0.07, "the temperature t (pytorch-metric-learning: 0.07)", Bound(0, low_open=True)),
    "miner": MINER,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return pair_loss_model(backbone, embedding_dim, pddm_tf.NTXentLoss(**options_of(settings, OPTIONS)), settings)


SPEC = register_method(MethodSpec(
    name="ntxent",
    summary="NT-Xent / InfoNCE (Chen et al., ICML 2020) with every same-class pair a positive.",
    build=build,
    options=OPTIONS,
    flags=XBM_FLAGS,
    check=check_xbm,
))
