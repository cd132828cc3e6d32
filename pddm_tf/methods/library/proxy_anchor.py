"""proxy_anchor: the Proxy-Anchor loss (Kim et al., CVPR 2020; `pddm_tf.ProxyAnchorLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.methods.library._proxy import ANY_DISTANCE, NUM_CLASSES, lr_multiplier, proxy_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "margin": Setting(float, 0.1, "the proxy margin delta (paper: 0.1)"),
    "alpha": Setting(float, 32.0, "the scale alpha (paper: 32)", Bound(0, low_open=True)),
    "lr_multiplier": lr_multiplier(100.0, "Proxy-Anchor authors' code: 100"),
    "num_classes": NUM_CLASSES,
    "distance": Setting(str, "cosine_similarity", "how embeddings are scored against the proxies (paper: "
                        "cosine_similarity)", choices=ANY_DISTANCE),
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return proxy_model("ProxyAnchorLoss", backbone, embedding_dim, settings, OPTIONS)


SPEC = register_method(MethodSpec(
    name="proxy_anchor",
    summary="The Proxy-Anchor loss, proxies at 100x the learning rate (Kim et al., CVPR 2020).",
    build=build,
    options=OPTIONS,
))
