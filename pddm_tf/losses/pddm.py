"""The double-header hinge loss of PDDM (METHODS.md section 2) and its one-head triplet variant."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from pddm_tf._deprecation import warn_deprecated
from pddm_tf.distances import Distance
from pddm_tf.losses._base import (
    ElementLosses,
    EmbeddingLoss,
    LossBatch,
    finite_number,
    labels_from_y_true,
)
from pddm_tf.miners import Miner, QuadrupletMiner, Tuples
from pddm_tf.reducers import Reducer


class LossTerms(NamedTuple):
    """The parts of the objective, each a float32 scalar (0 when there is no valid quadruplet)."""

    total: tf.Tensor  # metric + embedding_weight * embedding
    metric: tf.Tensor  # E_m
    embedding: tf.Tensor  # E_e


def double_header_hinge(
    s_ij: tf.Tensor, s_ik: tf.Tensor, s_jl: tf.Tensor,
    d_ij: tf.Tensor, d_ik: tf.Tensor, d_jl: tf.Tensor,
    alpha: float, beta: float, embedding_weight: float, heads: int = 2,
) -> LossTerms:
    """Mean over q quadruplets of E_m + lambda E_e (METHODS.md section 2).

    E_m = max(0, alpha + S_ik - S_ij) + max(0, alpha + S_jl - S_ij)
    E_e = max(0, beta + D_ij - D_ik) + max(0, beta + D_ij - D_jl), D the squared Euclidean distance.
    With heads=1 (the paper's PDDM+Triplet) only the (i, j, k) terms are kept.

    All inputs are [q]. The paper sums over quadruplets; we average, so the loss scale (and hence the
    learning rate) does not depend on how many quadruplets the miner returns. For q = 0 every term
    is 0, never NaN.
    """
    if heads not in (1, 2):
        raise ValueError(f"heads must be 1 (triplet) or 2 (double header), got {heads}")
    metric = tf.nn.relu(alpha + s_ik - s_ij)
    embedding = tf.nn.relu(beta + d_ij - d_ik)
    if heads == 2:
        metric += tf.nn.relu(alpha + s_jl - s_ij)
        embedding += tf.nn.relu(beta + d_ij - d_jl)
    count = tf.maximum(tf.cast(tf.size(s_ij), metric.dtype), 1.0)
    e_m = tf.reduce_sum(metric) / count
    e_e = tf.reduce_sum(embedding) / count
    return LossTerms(total=e_m + embedding_weight * e_e, metric=e_m, embedding=e_e)


@keras.saving.register_keras_serializable(package="pddm_tf")
class DoubleHeaderHingeLoss(EmbeddingLoss):
    """PDDM's double-header hinge loss E_m + lambda E_e over mined quadruplets (METHODS.md section 2).

    Standalone use: `loss(labels, {"embeddings": f, "scores": S})` with labels [m] int, f [m, d]
    embeddings and S [m, m] the all-pairs similarity (e.g. `PDDM()(f)`). Quadruplets are mined on
    S by `miner` (a `pddm_tf.miners.QuadrupletMiner`) and the loss is evaluated on them; gradients
    flow through S and f. Without "scores" the similarity is the negated `distance` (default
    -||f_i - f_j||^2), i.e. the quadruplet loss with Euclidean hard mining. `PDDMModel` instead
    calls `quadruplet_terms` with pair scores computed only for the mined pairs, and HDML
    `from_embeddings` with synthetic ones.

    Per quadruplet (i, j, k, l), the per-element terms are
        metric:    max(0, alpha + S_ik - S_ij) + max(0, alpha + S_jl - S_ij)
        embedding: max(0, beta + D_ij - D_ik) + max(0, beta + D_ij - D_jl)   (D: `distance`)
    (heads=1 keeps the (i, j, k) halves), each reduced by `reducer`: E_m and E_e. The default
    `MeanReducer` averages over the q quadruplets (the paper sums; averaging keeps the loss scale,
    hence the learning rate, independent of how many quadruplets the miner returns); q = 0 gives 0.
    The pairing is within one batch: `ref_embeddings` are refused.

    Args:
      alpha: margin of the metric (PDDM score) hinge. The defaults (alpha 1.0, beta 0.5,
        lambda 0.5, per-pair mining) are the best of the settings measured in BENCHMARKS.md
        section 2 (alpha 0.5/1.0/2.0, beta 0.2/0.5, lambda 0/0.5/1/2, hardest vs per-pair).
      beta: margin of the embedding hinge; unit embeddings have squared distances in [0, 4].
      embedding_weight: lambda, the weight of E_e.
      heads: 2 for the quadruplet (double-header) loss, 1 for the PDDM+Triplet variant.
      miner: a `QuadrupletMiner` (or its name or config dict); default `QuadrupletMiner("per_pair")`.
        `QuadrupletMiner("hardest")` is the paper's one quadruplet per batch.
      distance: D of the embedding term, any `pddm_tf.distances` distance or similarity (default
        "squared_euclidean", today's); a similarity enters through `Distance.farther`.
      reducer: a `pddm_tf.reducers` reducer (default "mean", today's behaviour).
      mining: deprecated spelling of `miner=QuadrupletMiner(mining)` ("per_pair" or "hardest"),
        kept for one release with a DeprecationWarning.

    Example (Euclidean scores S = -D; per-pair mining finds the quadruplets (0, 1, 2, 2) and
    (2, 3, 1, 1), whose E_m are 1.75 and 3 and E_e 1.25 and 2.5: (1.75 + 3) / 2 + 0.5 (1.25 + 2.5) / 2):
      >>> loss = DoubleHeaderHingeLoss()
      >>> float(loss(tf.constant([0, 0, 1, 1]), tf.constant([[0.0], [1.0], [1.5], [3.0]])))
      3.3125
    """

    default_distance = "squared_euclidean"
    default_reducer = "mean"
    requires_miner = True
    supports_ref = False

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, embedding_weight: float = 0.5, heads: int = 2,
                 miner: str | dict[str, Any] | Miner | None = None,
                 distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None, name: str = "double_header_hinge_loss",
                 **kwargs: Any) -> None:
        mining = kwargs.pop("mining", None)
        if mining is not None:
            if miner is not None:
                raise ValueError("pass miner=QuadrupletMiner(...) or the deprecated mining=..., not both")
            warn_deprecated(f"DoubleHeaderHingeLoss(mining={mining!r}) is deprecated: use "
                            f"DoubleHeaderHingeLoss(miner=QuadrupletMiner({mining!r}))", stacklevel=2)
            miner = QuadrupletMiner(mining)
        super().__init__(distance=distance, reducer=reducer, miner=QuadrupletMiner() if miner is None else miner,
                         name=name, **kwargs)
        if not isinstance(self.miner, QuadrupletMiner):
            raise ValueError(f"DoubleHeaderHingeLoss mines quadruplets: miner must be a QuadrupletMiner, "
                             f"got {self.miner!r}")
        if heads not in (1, 2):
            raise ValueError(f"heads must be 1 (triplet) or 2 (double header), got {heads}")
        owner = "DoubleHeaderHingeLoss"
        self.alpha = finite_number(owner, "alpha", alpha)
        self.beta = finite_number(owner, "beta", beta)
        self.embedding_weight = finite_number(owner, "embedding_weight", embedding_weight)
        if self.alpha < 0 or self.beta < 0 or self.embedding_weight < 0:
            raise ValueError("alpha, beta and embedding_weight must be non-negative")
        self.heads = int(heads)
        self.miner: QuadrupletMiner

    @property
    def mining(self) -> str:
        """The quadruplet miner's mode ("per_pair" or "hardest")."""
        return self.miner.mode

    def call(self, y_true: tf.Tensor, y_pred: Any) -> tf.Tensor:
        if isinstance(y_pred, dict):
            embeddings, scores = y_pred["embeddings"], y_pred.get("scores")
        else:
            embeddings, scores = y_pred, None
        return self.terms(labels_from_y_true(y_true), embeddings, scores).total

    def terms(self, labels: tf.Tensor, embeddings: tf.Tensor, scores: tf.Tensor | None = None) -> LossTerms:
        """All loss terms for a batch, mining on `scores` ([m, m] similarities; default the negated
        distance matrix)."""
        batch = self._batch(labels, embeddings, None, None)
        scores = self._scores(batch) if scores is None else tf.convert_to_tensor(scores)
        tuples = self.miner(batch.labels, batch.embeddings, -scores)

        def pick(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
            return tf.gather_nd(scores, tf.stack([a, b], axis=1))

        return self.quadruplet_terms(batch.embeddings, tuples, pick(tuples.anchors, tuples.positives),
                                     pick(tuples.anchors, tuples.negatives))

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        """The contract's entry (`compute`, `from_indices`): scores are the negated distance matrix."""
        assert tuples is not None  # requires_miner
        scores = self._scores(batch)
        s_ap = tf.gather_nd(scores, tf.stack([tuples.anchors, tuples.positives], axis=1))
        s_an = tf.gather_nd(scores, tf.stack([tuples.anchors, tuples.negatives], axis=1))
        gather = functools.partial(tf.gather, batch.embeddings)
        return self._elements(gather(tuples.anchors), gather(tuples.positives), gather(tuples.negatives),
                              tuples.groups, s_ap, s_an)

    def quadruplet_terms(self, embeddings: tf.Tensor, tuples: Tuples, s_ap: tf.Tensor, s_an: tf.Tensor) -> LossTerms:
        """Loss terms of `QuadrupletMiner`'s tuples of a batch: embeddings [m, d], tuples (2q rows, row
        r = (i, j, k) and row q + r = (j, i, l)), and the scores of each row's pairs, s_ap [2q]
        (S_ij, then S_ji = S_ij) and s_an [2q] (S_ik, then S_jl)."""
        gather = functools.partial(tf.gather, embeddings)
        return self.from_embeddings(gather(tuples.anchors), gather(tuples.positives), gather(tuples.negatives),
                                    tuples.groups, s_ap, s_an)

    def from_embeddings(self, anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor, groups: tf.Tensor | int,
                        s_ap: tf.Tensor, s_an: tf.Tensor) -> LossTerms:
        """Loss terms of q = `groups` quadruplets given as 2q rows of embeddings [2q, d] each, laid out as
        `QuadrupletMiner`'s tuples (the negatives may be synthetic, as HDML's), with their pair
        scores s_ap, s_an [2q]."""
        elements = self._elements(anchor, positive, negative, groups, s_ap, s_an)
        metric = tf.cast(self.reducer(elements["metric"].losses), self.dtype)
        embedding = tf.cast(self.reducer(elements["embedding"].losses), self.dtype)
        return LossTerms(total=metric + self.embedding_weight * embedding, metric=metric, embedding=embedding)

    def _elements(self, anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor, groups: tf.Tensor | int,
                  s_ap: tf.Tensor, s_an: tf.Tensor) -> dict[str, ElementLosses]:
        q = groups
        # D_ij once (rows q + r repeat the pair as (j, i)); D_ik and D_jl from all 2q rows.
        d_ij, d_an = self.distance.paired(anchor[:q], positive[:q]), self.distance.paired(anchor, negative)
        metric = tf.nn.relu(self.alpha + s_an[:q] - s_ap[:q])
        embedding = tf.nn.relu(self.beta + self.distance.farther(d_ij, d_an[:q]))
        if self.heads == 2:
            metric += tf.nn.relu(self.alpha + s_an[q:] - s_ap[:q])
            embedding += tf.nn.relu(self.beta + self.distance.farther(d_ij, d_an[q:]))
        return {"metric": ElementLosses(metric),
                "embedding": ElementLosses(embedding, weight=self.embedding_weight)}

    def _scores(self, batch: LossBatch) -> tf.Tensor:
        """Similarities from the distance matrix, for mining without a PDDM: -D (or S itself)."""
        return batch.matrix if self.distance.larger_is_closer else -batch.matrix

    def _deprecated_from_indices(self, first: Any, second: Any, third: Any, fourth: Any = None,
                                 **kwargs: Any) -> Any:
        """The pre-contract spelling from_indices(embeddings, tuples, s_ap, s_an) -> LossTerms."""
        warn_deprecated("DoubleHeaderHingeLoss.from_indices(embeddings, tuples, s_ap, s_an) is deprecated: call "
                        "quadruplet_terms(embeddings, tuples, s_ap, s_an)", stacklevel=3)
        return self.quadruplet_terms(first, second, kwargs.get("s_ap", third), kwargs.get("s_an", fourth))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta,
                "embedding_weight": self.embedding_weight, "heads": self.heads}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DoubleHeaderHingeLoss:
        config = dict(config)
        if "mining" in config:  # configs saved before the miner was an object
            config["miner"] = QuadrupletMiner(config.pop("mining"))
        return cls(**config)
