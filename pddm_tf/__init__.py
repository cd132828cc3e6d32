"""pddm_tf: deep metric learning for Keras 3 around the Position-Dependent Deep Metric (PDDM)."""

from pddm_tf.backbones import BACKBONES, Backbone, backbone, small_convnet
from pddm_tf.clustering import ClusterAssignment, DivideAndConquer, cluster_balanced_dataset
from pddm_tf.datasets import DatasetNotPreparedError, load_tfds
from pddm_tf.distributed import distribute_training_data, embed_files, is_chief, make_strategy, worker_info
from pddm_tf.divide_and_conquer import DivideAndConquerModel
from pddm_tf.fault_tolerance import BackupAndRestore, SamplerPosition
from pddm_tf.hdml import HDMLModel, hardness_aware_negatives
from pddm_tf.layers import PDDM, EmbeddingHead, GeMPooling, L2Normalize, SlicedEmbeddingHead
from pddm_tf.losses import (ContrastiveLoss, DoubleHeaderHingeLoss, EmbeddingLoss, LiftedStructuredLoss, LossTerms,
                            MarginLoss, MultiSimilarityLoss, NPairLoss, TripletLoss, double_header_hinge)
from pddm_tf.mining import Quadruplets, euclidean_scores, mine_quadruplets, pair_masks
from pddm_tf.models import EmbeddingModel, MetricLossModel, PDDMModel, gather_global_batch
from pddm_tf.training_checks import LearningCheck, NothingLearnedError

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackupAndRestore",
    "ClusterAssignment",
    "ContrastiveLoss",
    "DatasetNotPreparedError",
    "DivideAndConquer",
    "DivideAndConquerModel",
    "DoubleHeaderHingeLoss",
    "EmbeddingHead",
    "EmbeddingLoss",
    "EmbeddingModel",
    "GeMPooling",
    "HDMLModel",
    "L2Normalize",
    "LearningCheck",
    "LiftedStructuredLoss",
    "LossTerms",
    "MarginLoss",
    "MetricLossModel",
    "MultiSimilarityLoss",
    "NPairLoss",
    "NothingLearnedError",
    "PDDM",
    "PDDMModel",
    "Quadruplets",
    "SamplerPosition",
    "SlicedEmbeddingHead",
    "TripletLoss",
    "backbone",
    "cluster_balanced_dataset",
    "distribute_training_data",
    "double_header_hinge",
    "embed_files",
    "euclidean_scores",
    "gather_global_batch",
    "hardness_aware_negatives",
    "is_chief",
    "load_tfds",
    "make_strategy",
    "mine_quadruplets",
    "pair_masks",
    "small_convnet",
    "worker_info",
]
