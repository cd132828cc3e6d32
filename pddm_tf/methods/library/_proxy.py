"""What the proxy and classification-margin methods share (TF-free): their common options and the
builder of a `ProxyLossModel` around one of the losses of `pddm_tf.losses` (issue 32 items 1-2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.methods.library._shared import options_of
from pddm_tf.options import Bound, Setting

#: The number of proxies' classes; None: the training classes (labels must lie in [0, num_classes)).
NUM_CLASSES = Setting(int, None, "number of classes with proxies (None: the training classes)", Bound(1),
                      optional=True)
#: The distance option of the losses defined on cosine scores.
COSINE_ONLY = Setting(str, "cosine_similarity", "how embeddings are scored against the proxies (the loss is "
                      "defined on cosines: cosine_similarity, or cosine = 1 - cos)",
                      choices=("cosine_similarity", "cosine"))
#: The distances of the proxy losses that take any (`pddm_tf.distances.DISTANCES`).
ANY_DISTANCE = ("cosine_similarity", "cosine", "squared_euclidean", "euclidean", "dot_product")


def lr_multiplier(default: float, source: str) -> Setting:
    """The option of the proxies' learning-rate factor, defaulting to the paper's `default`."""
    return Setting(float, default, f"factor on the proxies' learning rate ({source})", Bound(0, low_open=True))


def proxy_model(loss_name: str, backbone: Any, embedding_dim: int, settings: Mapping[str, Any],
                options: Mapping[str, Setting]) -> Any:
    """`ProxyLossModel(backbone, pddm_tf.<loss_name>(num_classes, embedding_dim, **options))`."""
    values = options_of(settings, options)
    classes = values.pop("num_classes", None) or settings["training_classes"]
    if classes is None:
        raise ValueError(f"{loss_name} needs the number of training classes (option num_classes)")
    loss = getattr(pddm_tf, loss_name)(num_classes=classes, embedding_size=embedding_dim, **values)
    return pddm_tf.ProxyLossModel(backbone, loss, embedding_dim=embedding_dim, dropout=settings["dropout"])
