"""contrastive: the contrastive loss on every pair of the batch (`pddm_tf.ContrastiveLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import DISTANCE, MINER, XBM_FLAGS, check_xbm, options_of, pair_loss_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, ConfigError, Setting

OPTIONS = {
    "pos_margin": Setting(float, 0.0, "positive pairs are pulled in to this distance", Bound(0)),
    "neg_margin": Setting(float, 0.5, "negative pairs are pushed out to this distance", Bound(0, low_open=True)),
    "distance": DISTANCE,
    "miner": MINER,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    loss = pddm_tf.ContrastiveLoss(**options_of(settings, OPTIONS))
    return pair_loss_model(backbone, embedding_dim, loss, settings)


def check(values: Mapping[str, Any]) -> None:
    check_xbm(values)
    options = {name: spec.default for name, spec in OPTIONS.items()} | dict(values.get("loss_options") or {})
    if options["pos_margin"] >= options["neg_margin"]:
        raise ConfigError(f"--loss_options: contrastive needs pos_margin < neg_margin, got {options['pos_margin']} "
                          f"and {options['neg_margin']}")


SPEC = register_method(MethodSpec(
    name="contrastive",
    summary="The contrastive loss (Hadsell et al., 2006) on every pair of the batch.",
    build=build,
    options=OPTIONS,
    flags=XBM_FLAGS,
    check=check,
))
