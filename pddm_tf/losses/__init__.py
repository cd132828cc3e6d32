"""Metric-learning losses: PDDM's double-header hinge and the standard baselines, on one contract.

Every embedding loss is a serializable Keras loss called as `loss(labels [m] int, embeddings [m, d])`
(or `compute(labels, embeddings, ref_embeddings=None, ref_labels=None)`, or `from_indices(labels,
embeddings, tuples, ...)` for given tuples). It computes per-element terms from a `Distance`
(`distance=`) and the tuples of its `miner`, and its `reducer` (`pddm_tf.reducers`) makes the
scalar; a batch without a valid pair gives 0, never NaN. Use them with `MetricLossModel`.

  _base.py    `EmbeddingLoss` (the contract), `PairLoss`, `ElementLosses`
  _batch.py   `LossBatch` (what `compute_terms` receives) and the input checks
"""

from pddm_tf.losses._base import (
    ElementLosses,
    EmbeddingLoss,
    LossBatch,
    PairLoss,
    check_embeddings,
    finite_number,
    labels_from_y_true,
    loss_supports_jit,
    masked_logsumexp,
)
from pddm_tf.losses._proxies import ProxyLoss
from pddm_tf.losses.arcface import ArcFaceLoss
from pddm_tf.losses.circle import CircleLoss
from pddm_tf.losses.contrastive import ContrastiveLoss
from pddm_tf.losses.cosface import CosFaceLoss
from pddm_tf.losses.cross_batch_memory import CrossBatchMemory
from pddm_tf.losses.fastap import FastAPLoss
from pddm_tf.losses.lifted import LiftedStructuredLoss
from pddm_tf.losses.margin import MarginLoss
from pddm_tf.losses.multi_similarity import MultiSimilarityLoss
from pddm_tf.losses.normalized_softmax import NormalizedSoftmaxLoss
from pddm_tf.losses.npair import NPairLoss
from pddm_tf.losses.ntxent import NTXentLoss
from pddm_tf.losses.pddm import DoubleHeaderHingeLoss, LossTerms, double_header_hinge
from pddm_tf.losses.proxy_anchor import ProxyAnchorLoss
from pddm_tf.losses.proxy_nca import ProxyNCALoss
from pddm_tf.losses.soft_triple import SoftTripleLoss
from pddm_tf.losses.subcenter_arcface import SubCenterArcFaceLoss
from pddm_tf.losses.supcon import SupConLoss
from pddm_tf.losses.triplet import TRIPLET_MINING, TripletLoss
from pddm_tf.losses.tuplet_margin import TupletMarginLoss

__all__ = [
    "ArcFaceLoss",
    "CosFaceLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyLoss",
    "ProxyNCALoss",
    "SoftTripleLoss",
    "SubCenterArcFaceLoss",
    "TupletMarginLoss",
    "SupConLoss",
    "NTXentLoss",
    "FastAPLoss",
    "CrossBatchMemory",
    "CircleLoss",
    "TRIPLET_MINING",
    "ContrastiveLoss",
    "DoubleHeaderHingeLoss",
    "ElementLosses",
    "EmbeddingLoss",
    "LiftedStructuredLoss",
    "LossBatch",
    "LossTerms",
    "MarginLoss",
    "MultiSimilarityLoss",
    "NPairLoss",
    "PairLoss",
    "TripletLoss",
    "check_embeddings",
    "double_header_hinge",
    "finite_number",
    "labels_from_y_true",
    "loss_supports_jit",
    "masked_logsumexp",
]
