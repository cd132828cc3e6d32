"""hdml_npair: Hardness-Aware Deep Metric Learning around the N-pair loss (`pddm_tf.HDMLModel(base="npair")`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.methods.library._shared import HDML_FLAGS, hdml_model
from pddm_tf.methods.spec import MethodSpec, register_method


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return hdml_model(backbone, embedding_dim, settings, base="npair")


SPEC = register_method(MethodSpec(
    name="hdml_npair",
    summary="HDML (Zheng et al., CVPR 2019) around the N-pair loss.",
    build=build,
    flags=HDML_FLAGS,
))
