"""multi_similarity: the multi-similarity loss (`pddm_tf.MultiSimilarityLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import MINER, XBM_FLAGS, check_xbm, options_of, pair_loss_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "alpha": Setting(float, 2.0, "the positives' scale", Bound(0, low_open=True)),
    "beta": Setting(float, 50.0, "the negatives' scale", Bound(0, low_open=True)),
    "base": Setting(float, 0.5, "the similarity margin lambda"),
    "epsilon": Setting(float, 0.1, "the pair-mining margin", Bound(0)),
    "miner": MINER,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    loss = pddm_tf.MultiSimilarityLoss(**options_of(settings, OPTIONS))
    return pair_loss_model(backbone, embedding_dim, loss, settings)


SPEC = register_method(MethodSpec(
    name="multi_similarity",
    summary="The multi-similarity loss with its pair mining (Wang et al., CVPR 2019).",
    build=build,
    options=OPTIONS,
    flags=XBM_FLAGS,
    check=check_xbm,
))
