"""soft_triple: the SoftTriple loss (Qian et al., ICCV 2019; `pddm_tf.SoftTripleLoss`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.methods.library._proxy import COSINE_ONLY, NUM_CLASSES, lr_multiplier, proxy_model
from pddm_tf.methods.spec import MethodSpec, register_method
from pddm_tf.options import Bound, ConfigError, Setting

OPTIONS = {
    "centers_per_class": Setting(int, 10, "centres per class K (paper: 10)", Bound(1)),
    "la": Setting(float, 20.0, "the logits' scale lambda (paper: 20)", Bound(0, low_open=True)),
    "gamma": Setting(float, 0.1, "the soft assignment's temperature (paper: 0.1)", Bound(0, low_open=True)),
    "margin": Setting(float, 0.01, "the margin delta (paper: 0.01)"),
    "center_regularizer": Setting(float, 0.0, "tau, the weight of the regulariser merging a class's centres "
                                  "(paper: 0.2; 0 = off, as pytorch-metric-learning's default)", Bound(0)),
    "lr_multiplier": lr_multiplier(100.0, "SoftTriple authors' command: centres 1e-2, network 1e-4"),
    "num_classes": NUM_CLASSES,
    "distance": COSINE_ONLY,
}


def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
    return proxy_model("SoftTripleLoss", backbone, embedding_dim, settings, OPTIONS)


def check(values: Mapping[str, Any]) -> None:
    options = {name: spec.default for name, spec in OPTIONS.items()} | dict(values.get("loss_options") or {})
    if options["center_regularizer"] > 0 and options["centers_per_class"] == 1:
        raise ConfigError(f"--loss_options: soft_triple's center_regularizer={options['center_regularizer']} needs "
                          "centers_per_class >= 2 (it merges the centres of a class; one centre has none to merge)")


SPEC = register_method(MethodSpec(
    name="soft_triple",
    summary="The SoftTriple loss, K centres per class (Qian et al., ICCV 2019).",
    build=build,
    options=OPTIONS,
    check=check,
))
