"""What ArcFace, CosFace and SubCenter-ArcFace share: softmax cross-entropy on scaled cosine logits
whose target entry carries a margin (pytorch-metric-learning's `LargeMarginSoftmaxLoss` family)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from pddm_tf.losses._base import DistanceLike, ElementLosses, MinerLike, ReducerLike
from pddm_tf.losses._proxies import ProxyLoss, cross_entropy, finite


class MarginSoftmaxLoss(ProxyLoss):
    """L_i = -log softmax(scale * cos'_i)[y_i] per embedding, reduced by `reducer` (default "mean"),
    where cos'_ic = cos(x_i, W_c) for c != y_i and
    `target(cos(x_i, W_{y_i}))` for the true class. With K sub-centres per class, cos(x_i, W_c) is the
    maximum over the class's sub-centres (SubCenter-ArcFace). Subclasses implement `target`.

    Args:
      num_classes: C. embedding_size: d. margin: the subclass's margin. scale: s.
      sub_centers: K sub-centres per class (1: one weight vector per class).
      lr_multiplier: the class weights' learning-rate factor (1: trained with the network).
      distance: "cosine_similarity" (default) or "cosine". reducer: default "mean". miner: must be None.
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float, scale: float, sub_centers: int = 1,
                 lr_multiplier: float = 1.0, distance: DistanceLike | None = None,
                 reducer: ReducerLike | None = None, miner: MinerLike | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, proxies_per_class=sub_centers, lr_multiplier=lr_multiplier,
                         distance=distance, reducer=reducer, miner=miner, **kwargs)
        owner = type(self).__name__
        self.margin = finite("margin", margin, 0.0, owner=owner)
        self.scale = finite("scale", scale, 0.0, True, owner=owner)

    def target(self, cosine: tf.Tensor) -> tf.Tensor:
        """The true class's modified cosine, elementwise on [m]."""
        raise NotImplementedError

    def proxy_terms(self, labels: tf.Tensor, embeddings: tf.Tensor) -> dict[str, ElementLosses]:
        cosine = tf.reduce_max(self.cosines(embeddings), axis=-1)             # [m, C]
        true = tf.one_hot(labels, self.num_classes, on_value=True, off_value=False)
        target = self.target(tf.gather(cosine, labels, axis=1, batch_dims=1))  # [m]
        logits = tf.where(true, target[:, None], cosine)
        return {"loss": cross_entropy(self.scale * logits, labels)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "scale": self.scale}
