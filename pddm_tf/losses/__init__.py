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
from pddm_tf.losses.contrastive import ContrastiveLoss
from pddm_tf.losses.lifted import LiftedStructuredLoss
from pddm_tf.losses.margin import MarginLoss
from pddm_tf.losses.multi_similarity import MultiSimilarityLoss
from pddm_tf.losses.npair import NPairLoss
from pddm_tf.losses.pddm import DoubleHeaderHingeLoss, LossTerms, double_header_hinge
from pddm_tf.losses.triplet import TRIPLET_MINING, TripletLoss

__all__ = [
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
