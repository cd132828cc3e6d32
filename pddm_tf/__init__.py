"""pddm_tf: deep metric learning for Keras 3 around the Position-Dependent Deep Metric (PDDM)."""

from pddm_tf.backbones import small_convnet
from pddm_tf.layers import PDDM, EmbeddingHead, L2Normalize
from pddm_tf.losses import DoubleHeaderHingeLoss, LossTerms, double_header_hinge
from pddm_tf.mining import Quadruplets, euclidean_scores, mine_quadruplets, pair_masks
from pddm_tf.models import EmbeddingModel, PDDMModel, gather_global_batch

__version__ = "0.1.0"

__all__ = [
    "DoubleHeaderHingeLoss",
    "EmbeddingHead",
    "EmbeddingModel",
    "L2Normalize",
    "LossTerms",
    "PDDM",
    "PDDMModel",
    "Quadruplets",
    "double_header_hinge",
    "euclidean_scores",
    "gather_global_batch",
    "mine_quadruplets",
    "pair_masks",
    "small_convnet",
]
