"""hdml_pddm: Hardness-Aware Deep Metric Learning around the PDDM double-header loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import HDML_FLAGS, PDDM_FLAGS, double_header_loss, hdml_model
from pddm_tf.methods.spec import MethodSpec, register_method


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    # alpha/beta stay the PDDM margins, as for the other methods; HDML's own are hdml_alpha/hdml_beta.
    pddm = pddm_tf.PDDM(normalize_inputs=settings["pddm_normalize_inputs"], name="pddm")
    return hdml_model(backbone, embedding_dim, settings, base="pddm", pddm=pddm,
                      pddm_loss=double_header_loss(settings, mining=False))


# HDML mines its own synthetic quadruplets: the PDDM mining flags do not apply.
_PDDM_FLAGS = {name: value for name, value in PDDM_FLAGS.items() if name not in ("mining", "mining_score")}

SPEC = register_method(MethodSpec(
    name="hdml_pddm",
    summary="HDML (Zheng et al., CVPR 2019) around the PDDM double-header loss.",
    build=build,
    flags={**HDML_FLAGS, **_PDDM_FLAGS},
))
