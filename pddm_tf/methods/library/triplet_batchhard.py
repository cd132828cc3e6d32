"""triplet_batchhard: the triplet loss with batch-hard (Hermans et al., 2017) mining
(`pddm_tf.TripletLoss(miner="batch_hard")`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import DISTANCE, loss_model, options_of
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "margin": Setting(float, 0.2, "the triplet margin", Bound(0)),
    "distance": DISTANCE,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    # The mining defines the method, so it is not an option.
    loss = pddm_tf.TripletLoss(miner="batch_hard", **options_of(settings, OPTIONS))
    return loss_model(backbone, embedding_dim, loss, settings)


SPEC = register_method(MethodSpec(
    name="triplet_batchhard",
    summary="The triplet loss with batch-hard (Hermans et al., 2017) mining.",
    build=build,
    options=OPTIONS,
))
