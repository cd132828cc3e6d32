"""pddm_tf: deep metric learning for Keras 3 around the Position-Dependent Deep Metric (PDDM).

`import pddm_tf` is light: TensorFlow and the library's modules are imported when a name is
first used (PEP 562), so `pddm-tf --help` answers at once. The first use of any name below
imports every module that holds one, which also registers the library's Keras classes for
`keras.saving.load_model` (a bare `import pddm_tf` does not: use `pddm_tf.export.load_keras_model`,
or touch any name, e.g. `pddm_tf.EmbeddingModel`, before loading).
"""

from __future__ import annotations

import importlib

from pddm_tf._lazy import lazy_attributes

__version__ = "0.1.0"

# Public name -> the module that holds it.
_EXPORTS: dict[str, str] = {
    "BACKBONES": "pddm_tf.backbones",
    "Backbone": "pddm_tf.backbones",
    "BackupAndRestore": "pddm_tf.training.fault_tolerance",
    "ClusterAssignment": "pddm_tf.models",
    "ContrastiveLoss": "pddm_tf.losses",
    "CircleLoss": "pddm_tf.losses",
    "CrossBatchMemory": "pddm_tf.losses",
    "FastAPLoss": "pddm_tf.losses",
    "NTXentLoss": "pddm_tf.losses",
    "SupConLoss": "pddm_tf.losses",
    "TupletMarginLoss": "pddm_tf.losses",
    "MultiSimilarityMiner": "pddm_tf.miners",
    "PairMarginMiner": "pddm_tf.miners",
    "TripletMarginMiner": "pddm_tf.miners",
    "CosineDistance": "pddm_tf.distances",
    "DISTANCES": "pddm_tf.distances",
    "Distance": "pddm_tf.distances",
    "EuclideanDistance": "pddm_tf.distances",
    "SquaredEuclideanDistance": "pddm_tf.distances",
    "get_distance": "pddm_tf.distances",
    "CosineSimilarity": "pddm_tf.distances",
    "DotProductSimilarity": "pddm_tf.distances",
    "AvgNonZeroReducer": "pddm_tf.reducers",
    "MeanReducer": "pddm_tf.reducers",
    "REDUCERS": "pddm_tf.reducers",
    "Reducer": "pddm_tf.reducers",
    "SumReducer": "pddm_tf.reducers",
    "ThresholdReducer": "pddm_tf.reducers",
    "get_reducer": "pddm_tf.reducers",
    "ElementLosses": "pddm_tf.losses",
    "LossBatch": "pddm_tf.losses",
    "PairLoss": "pddm_tf.losses",
    "DatasetNotPreparedError": "pddm_tf.data.tfds_loaders",
    "PDDMDeprecationWarning": "pddm_tf._deprecation",
    "DivideAndConquer": "pddm_tf.models",
    "DivideAndConquerModel": "pddm_tf.models",
    "DoubleHeaderHingeLoss": "pddm_tf.losses",
    "EmbeddingHead": "pddm_tf.layers",
    "EmbeddingLoss": "pddm_tf.losses",
    "EmbeddingModel": "pddm_tf.models",
    "FewShotResult": "pddm_tf.evaluation",
    "GeMPooling": "pddm_tf.layers",
    "HDMLModel": "pddm_tf.models",
    "HardnessSchedule": "pddm_tf.models",
    "Index": "pddm_tf.evaluation",
    "L2Normalize": "pddm_tf.layers",
    "LearningCheck": "pddm_tf.training.checks",
    "Lookup": "pddm_tf.evaluation",
    "LiftedStructuredLoss": "pddm_tf.losses",
    "LossTerms": "pddm_tf.losses",
    "MarginLoss": "pddm_tf.losses",
    "MetricLossModel": "pddm_tf.models",
    "MilvusGallery": "pddm_tf.vectordb.milvus",
    "BatchHardMiner": "pddm_tf.miners",
    "ClosestBeyondCutoffMiner": "pddm_tf.miners",
    "DistanceWeightedMiner": "pddm_tf.miners",
    "MINERS": "pddm_tf.miners",
    "Miner": "pddm_tf.miners",
    "NPairMiner": "pddm_tf.miners",
    "QuadrupletMiner": "pddm_tf.miners",
    "SemiHardMiner": "pddm_tf.miners",
    "Tuples": "pddm_tf.miners",
    "get_miner": "pddm_tf.miners",
    "MultiSimilarityLoss": "pddm_tf.losses",
    "NPairLoss": "pddm_tf.losses",
    "NothingLearnedError": "pddm_tf.training.checks",
    "PDDM": "pddm_tf.layers",
    "PDDMModel": "pddm_tf.models",
    "Quadruplets": "pddm_tf.miners",
    "SamplerPosition": "pddm_tf.training.fault_tolerance",
    "SlicedEmbeddingHead": "pddm_tf.layers",
    "SynthesisConfig": "pddm_tf.models",
    "TripletLoss": "pddm_tf.losses",
    "WarmupCosine": "pddm_tf.training.optimizers",
    "backbone": "pddm_tf.backbones",
    "class_balanced_dataset_from_arrays": "pddm_tf.data",
    "cluster_balanced_dataset": "pddm_tf.models",
    "distribute_training_data": "pddm_tf.training.distributed",
    "double_header_hinge": "pddm_tf.losses",
    "embed_files": "pddm_tf.training.distributed",
    "euclidean_scores": "pddm_tf.miners",
    "evaluate_few_shot": "pddm_tf.evaluation",
    "check_pixel_limit": "pddm_tf.data",
    "few_shot_accuracy": "pddm_tf.evaluation",
    "gather_global_batch": "pddm_tf.models",
    "hardness_aware_negatives": "pddm_tf.models",
    "is_chief": "pddm_tf.training.distributed",
    "load_tfds": "pddm_tf.data.tfds_loaders",
    "make_optimizer": "pddm_tf.training.optimizers",
    "make_strategy": "pddm_tf.training.distributed",
    "mine_quadruplets": "pddm_tf.miners",
    "pair_masks": "pddm_tf.miners",
    "small_convnet": "pddm_tf.backbones",
    "worker_info": "pddm_tf.training.distributed",
    # Proxy and classification-margin losses (issue 32 items 1-2) and their model.
    "ArcFaceLoss": "pddm_tf.losses",
    "CosFaceLoss": "pddm_tf.losses",
    "NormalizedSoftmaxLoss": "pddm_tf.losses",
    "ProxyAnchorLoss": "pddm_tf.losses",
    "ProxyLoss": "pddm_tf.losses",
    "ProxyLossModel": "pddm_tf.models",
    "ProxyNCALoss": "pddm_tf.losses",
    "SoftTripleLoss": "pddm_tf.losses",
    "SubCenterArcFaceLoss": "pddm_tf.losses",
}

__all__ = sorted(_EXPORTS)


def _import_all() -> None:
    """Imports every module with a public name; registers all the library's Keras classes."""
    for module in sorted(set(_EXPORTS.values())):
        importlib.import_module(module)


# All of them at once on the first use of any, so that any use registers every Keras class.
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, before_import=_import_all)
