"""Proxy-Anchor loss (Kim, Kim, Cho & Kwak, "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.losses._base import DistanceLike, ElementLosses, MinerLike, ReducerLike, masked_logsumexp
from pddm_tf.losses._proxies import ProxyLoss, finite


@keras.saving.register_keras_serializable(package="pddm_tf")
class ProxyAnchorLoss(ProxyLoss):
    """Proxy-Anchor loss: each class proxy is an anchor pulling its batch embeddings in and pushing the
    others out (Kim et al. 2020).

    With s(x, p) the embedding-to-proxy score (cosine similarity, or minus a distance on normalised
    vectors: `ProxyLoss.scores`), P the C proxies, P+ those whose class is in the batch, X_p+ / X_p-
    the batch embeddings of / not of p's class:

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
          + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))

    Both log(1 + sum exp) are max-shifted log-sum-exps. Two components, each reduced by `reducer`:
    "positive" [C] (masked to P+) and "negative" [C]; the default "mean" divides them by |P+|
    (floored at 1: an empty batch is 0) and C, pytorch-metric-learning's `ProxyAnchorLoss` (same
    names, defaults and divisions).
    Usage: `loss(labels [m] int in [0, C), embeddings [m, d]) -> scalar`.

    Args:
      num_classes: C. embedding_size: d.
      margin: delta (paper: 0.1).
      alpha: the scale alpha (paper: 32).
      lr_multiplier: the proxies' learning-rate factor; 100 as in the authors' code (proxies at
        100 x the network's learning rate), applied by `pddm_tf.ProxyLossModel`.
      distance: "cosine_similarity" (default, the paper's s), or any registered distance on the
        normalised vectors; for one where smaller is closer, s - delta and s + delta read delta - d
        and -delta - d (as in PML).
      reducer: default "mean" (see above). miner: must be None.
    """

    cosine_only = False

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32.0,
                 lr_multiplier: float = 100.0, distance: DistanceLike | None = None,
                 reducer: ReducerLike | None = None, miner: MinerLike | None = None,
                 name: str = "proxy_anchor_loss", **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, lr_multiplier=lr_multiplier, distance=distance,
                         reducer=reducer, miner=miner, name=name, **kwargs)
        self.margin = finite("margin", margin, owner="ProxyAnchorLoss")
        self.alpha = finite("alpha", alpha, 0.0, True, owner="ProxyAnchorLoss")

    def proxy_terms(self, labels: tf.Tensor, embeddings: tf.Tensor) -> dict[str, ElementLosses]:
        s = self.scores(embeddings)                                           # [m, C]
        positive = tf.one_hot(labels, self.num_classes, on_value=True, off_value=False)
        # Per proxy (column): log(1 + sum over its positives / negatives).
        pos = masked_logsumexp(tf.transpose(-self.alpha * (s - self.margin)), tf.transpose(positive), with_one=True)
        neg = masked_logsumexp(tf.transpose(self.alpha * (s + self.margin)), tf.transpose(~positive), with_one=True)
        return {"positive": ElementLosses(pos, mask=tf.reduce_any(positive, axis=0)),
                "negative": ElementLosses(neg)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "alpha": self.alpha}
