"""Embedding models: a backbone, an embedding head and one training method's step.

Every model is an `EmbeddingModel` (backbone -> L2-normalised head; the shared train and test
steps, the global-batch gather under a distribution strategy, `index` / `lookup`); a method
implements its hooks (`mine`, `loss_terms`, or `batch_terms`). Each model is serializable
(`keras.saving.register_keras_serializable(package="pddm_tf")`).

  base.py                `EmbeddingModel`, `gather_global_batch`, `MetricLossModel` (any loss)
  pddm.py                `PDDMModel`: hard quadruplets mined and scored by a PDDM unit
  hdml.py                `HDMLModel`: hardness-aware synthetic negatives (generator, classifier)
  hdml_config.py         its settings groups `HardnessSchedule` and `SynthesisConfig`
  proxy.py               `ProxyLossModel`: a loss's proxies trained by their own optimiser (lr multiplier)
  divide_and_conquer.py  `DivideAndConquerModel`: K learners on K slices of one embedding
  clustering.py          Divide-and-Conquer's clusters: k-means of the training set, per-cluster
                         P x K batches and the `DivideAndConquer` callback that re-clusters
"""

from pddm_tf.models.base import EmbeddingModel, MetricLossModel, gather_global_batch
from pddm_tf.models.clustering import (
    CLUSTER_ON,
    CONQUER,
    DROPPED,
    ClusterAssignment,
    DivideAndConquer,
    check_clusters,
    cluster_balanced_dataset,
    cluster_features,
    cluster_quality,
    compute_clusters,
    drop_singleton_classes,
    kmeans_clusters,
    match_clusters,
)
from pddm_tf.models.divide_and_conquer import DivideAndConquerModel
from pddm_tf.models.hdml import (
    GENERATOR_INPUTS,
    HDML_BASES,
    HardnessSchedule,
    HDMLModel,
    SynthesisConfig,
    hardness_aware_negatives,
)
from pddm_tf.models.pddm import MINING_SCORES, PDDM_TERMS, PDDMModel, mine_with_pddm, pddm_quadruplet_terms
from pddm_tf.models.proxy import ProxyLossModel, ScaledSchedule

__all__ = [
    "CLUSTER_ON",
    "CONQUER",
    "DROPPED",
    "GENERATOR_INPUTS",
    "HDML_BASES",
    "MINING_SCORES",
    "PDDM_TERMS",
    "ClusterAssignment",
    "DivideAndConquer",
    "DivideAndConquerModel",
    "EmbeddingModel",
    "HDMLModel",
    "HardnessSchedule",
    "MetricLossModel",
    "PDDMModel",
    "ProxyLossModel",
    "ScaledSchedule",
    "SynthesisConfig",
    "check_clusters",
    "cluster_balanced_dataset",
    "cluster_features",
    "cluster_quality",
    "compute_clusters",
    "drop_singleton_classes",
    "gather_global_batch",
    "hardness_aware_negatives",
    "kmeans_clusters",
    "match_clusters",
    "mine_with_pddm",
    "pddm_quadruplet_terms",
]
