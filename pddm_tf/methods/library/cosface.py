"""cosface: the CosFace large margin cosine loss (Wang et al., CVPR 2018; `pddm_tf.CosFaceLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.methods.library._proxy import COSINE_ONLY, NUM_CLASSES, lr_multiplier, proxy_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "margin": Setting(float, 0.35, "the cosine margin m (paper: 0.35)", Bound(0)),
    "scale": Setting(float, 64.0, "the logits' scale s (paper: 64)", Bound(0, low_open=True)),
    "lr_multiplier": lr_multiplier(1.0, "paper: one learning rate"),
    "num_classes": NUM_CLASSES,
    "distance": COSINE_ONLY,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return proxy_model("CosFaceLoss", backbone, embedding_dim, settings, OPTIONS)


SPEC = register_method(MethodSpec(
    name="cosface",
    summary="The CosFace large margin cosine loss (Wang et al., CVPR 2018).",
    build=build,
    options=OPTIONS,
))
