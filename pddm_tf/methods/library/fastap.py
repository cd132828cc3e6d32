"""fastap: FastAP, a histogram approximation of average precision (`pddm_tf.FastAPLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import MINER, XBM_FLAGS, check_xbm, options_of, pair_loss_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "num_bins": Setting(int, 10, "histogram bins (Cakir et al.: 10)", Bound(1, 1000)),
    "distance": Setting(str, "squared_euclidean", "the distance on unit embeddings",
                        choices=("squared_euclidean", "euclidean", "cosine")),
    "miner": MINER,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return pair_loss_model(backbone, embedding_dim, pddm_tf.FastAPLoss(**options_of(settings, OPTIONS)), settings)


SPEC = register_method(MethodSpec(
    name="fastap",
    summary="FastAP (Cakir et al., CVPR 2019): learning to rank by average precision.",
    build=build,
    options=OPTIONS,
    flags=XBM_FLAGS,
    check=check_xbm,
))
