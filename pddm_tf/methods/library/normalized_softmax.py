"""normalized_softmax: the normalized softmax loss (Zhai & Wu, BMVC 2019; `pddm_tf.NormalizedSoftmaxLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.methods.library._proxy import COSINE_ONLY, NUM_CLASSES, lr_multiplier, proxy_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "temperature": Setting(float, 0.05, "the temperature sigma (paper: 0.05)", Bound(0, low_open=True)),
    "lr_multiplier": lr_multiplier(1.0, "paper: one learning rate"),
    "num_classes": NUM_CLASSES,
    "distance": COSINE_ONLY,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return proxy_model("NormalizedSoftmaxLoss", backbone, embedding_dim, settings, OPTIONS)


SPEC = register_method(MethodSpec(
    name="normalized_softmax",
    summary="The normalized softmax loss on cosine logits (Zhai & Wu, BMVC 2019).",
    build=build,
    options=OPTIONS,
))
