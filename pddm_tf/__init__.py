"""pddm_tf: deep metric learning for Keras 3 around the Position-Dependent Deep Metric (PDDM)."""

from pddm_tf.backbones import small_convnet
from pddm_tf.layers import PDDM, EmbeddingHead, L2Normalize
from pddm_tf.losses import (ContrastiveLoss, DoubleHeaderHingeLoss, EmbeddingLoss, LiftedStructuredLoss, LossTerms,
                            MarginLoss, MultiSimilarityLoss, NPairLoss, TripletLoss, double_header_hinge)
from pddm_tf.mining import Quadruplets, euclidean_scores, mine_quadruplets, pair_masks
from pddm_tf.models import EmbeddingModel, MetricLossModel, PDDMModel, gather_global_batch
from pddm_tf.hdml import HDMLModel, hardness_aware_negatives

__version__ = "0.1.0"

__all__ = [
    "ContrastiveLoss",
    "DoubleHeaderHingeLoss",
    "EmbeddingHead",
    "EmbeddingLoss",
    "EmbeddingModel",
    "HDMLModel",
    "L2Normalize",
    "LiftedStructuredLoss",
    "LossTerms",
    "MarginLoss",
    "MetricLossModel",
    "MultiSimilarityLoss",
    "NPairLoss",
    "PDDM",
    "PDDMModel",
    "Quadruplets",
    "TripletLoss",
    "double_header_hinge",
    "euclidean_scores",
    "gather_global_batch",
    "hardness_aware_negatives",
    "mine_quadruplets",
    "pair_masks",
    "small_convnet",
]
