"""proxy_nca: the ProxyNCA loss with ProxyNCA++'s temperature (`pddm_tf.ProxyNCALoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.methods.library._proxy import ANY_DISTANCE, NUM_CLASSES, lr_multiplier, proxy_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, Setting

OPTIONS = {
    "softmax_scale": Setting(float, 1.0, "1/T, the softmax scale (PML: 1; ProxyNCA++: T = 1/9, i.e. 9)",
                             Bound(0, low_open=True)),
    "lr_multiplier": lr_multiplier(1.0, "ProxyNCA as trained by the Proxy-Anchor authors: 1"),
    "num_classes": NUM_CLASSES,
    "distance": Setting(str, "squared_euclidean", "how embeddings are scored against the proxies (paper: "
                        "squared_euclidean)", choices=ANY_DISTANCE),
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return proxy_model("ProxyNCALoss", backbone, embedding_dim, settings, OPTIONS)


SPEC = register_method(MethodSpec(
    name="proxy_nca",
    summary="The ProxyNCA loss (Movshovitz-Attias et al., ICCV 2017) with ProxyNCA++'s softmax scale.",
    build=build,
    options=OPTIONS,
))
