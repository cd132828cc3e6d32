"""Metric-learning losses: PDDM's double-header hinge and the standard baselines.

Every baseline is a serializable Keras loss called as `loss(labels [m] int, embeddings [m, d])`
on L2-normalised embeddings, mines its pairs or triplets inside the batch (`pddm_tf.miners.mining`) and
returns 0, never NaN, for a batch without a valid pair. Use them with `MetricLossModel`.
"""

from pddm_tf.losses._base import EmbeddingLoss, PairLoss, check_embeddings, labels_from_y_true, loss_supports_jit
from pddm_tf.losses._proxies import ProxyLoss
from pddm_tf.losses.arcface import ArcFaceLoss
from pddm_tf.losses.contrastive import ContrastiveLoss
from pddm_tf.losses.cosface import CosFaceLoss
from pddm_tf.losses.lifted import LiftedStructuredLoss
from pddm_tf.losses.margin import MarginLoss
from pddm_tf.losses.multi_similarity import MultiSimilarityLoss
from pddm_tf.losses.normalized_softmax import NormalizedSoftmaxLoss
from pddm_tf.losses.npair import NPairLoss
from pddm_tf.losses.pddm import DoubleHeaderHingeLoss, LossTerms, double_header_hinge
from pddm_tf.losses.proxy_anchor import ProxyAnchorLoss
from pddm_tf.losses.proxy_nca import ProxyNCALoss
from pddm_tf.losses.soft_triple import SoftTripleLoss
from pddm_tf.losses.subcenter_arcface import SubCenterArcFaceLoss
from pddm_tf.losses.triplet import TRIPLET_MINING, TripletLoss

__all__ = [
    "ArcFaceLoss",
    "CosFaceLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyLoss",
    "ProxyNCALoss",
    "SoftTripleLoss",
    "SubCenterArcFaceLoss",
    "TRIPLET_MINING",
    "ContrastiveLoss",
    "DoubleHeaderHingeLoss",
    "EmbeddingLoss",
    "LiftedStructuredLoss",
    "LossTerms",
    "MarginLoss",
    "MultiSimilarityLoss",
    "NPairLoss",
    "PairLoss",
    "TripletLoss",
    "check_embeddings",
    "double_header_hinge",
    "labels_from_y_true",
    "loss_supports_jit",
]
