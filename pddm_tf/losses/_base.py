"""The one loss contract: `EmbeddingLoss` computes per-element terms, its `reducer` makes the scalar.

Flow of every embedding loss (`loss(labels, embeddings)`, `compute` or `from_indices`):

    inputs checked -> LossBatch (labels, embeddings, reference set, this loss's Distance)
      -> tuples = miner(batch)          (None without a miner: the loss's own choice, e.g. all pairs)
      -> compute_terms(batch, tuples)   {component: ElementLosses(losses, mask, extra, weight)}
      -> sum of weight * reducer(losses, mask, extra)

A new loss subclasses `EmbeddingLoss` and implements `compute_terms`; see /work/wt/CONTRACT.md.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar, NamedTuple

import keras
import tensorflow as tf

from pddm_tf._deprecation import warn_deprecated
from pddm_tf.distances import Distance, get_distance, serialize_distance
from pddm_tf.losses._batch import LossBatch, check_embeddings, labels_from_y_true
from pddm_tf.miners import Miner, Tuples, get_miner, serialize_miner
from pddm_tf.reducers import Reducer, get_reducer, serialize_reducer

# Stand-in for -inf in masked log-sum-exps: exp(_MASKED - max) underflows to exactly 0 like -inf
# would, but a row with nothing left stays finite (log-sum-exp of -inf is -inf, whose gradient is NaN).
_MASKED = -1e9

DistanceLike = str | dict[str, Any] | Distance
ReducerLike = str | dict[str, Any] | Reducer
MinerLike = str | dict[str, Any] | Miner


class ElementLosses(NamedTuple):
    """One component of a loss before reduction (pytorch-metric-learning's loss dict entry).

    Attributes:
      losses: per-element losses (one per pair, triplet, anchor, ...), any shape, finite.
      mask: bool of losses' shape, the elements that exist (None: all). Padding and invalid rows
        are False, so that shapes can stay static.
      extra: a scalar regulariser added to the selected sum before the reducer's division (it
        shares the divisor, as the margin loss's beta term and the N-pair loss's norm term do).
      weight: the component's weight in the total.
    """

    losses: tf.Tensor
    mask: tf.Tensor | None = None
    extra: tf.Tensor | float = 0.0
    weight: float = 1.0


def finite_number(owner: str, name: str, value: Any) -> float:
    """`value` as a float; raises ValueError naming `owner.name` when it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


def masked_logsumexp(values: tf.Tensor, mask: tf.Tensor, axis: int = -1, with_one: bool = False) -> tf.Tensor:
    """log sum_{mask} exp(values) along `axis`, computed stably (max-shifted).

    With `with_one`, log(1 + sum_{mask} exp(values)) (a zero logit is added), which is 0 for an empty
    mask. Without it an empty row gives a very negative finite number; mask such rows out downstream.
    """
    values = tf.where(mask, values, tf.constant(_MASKED, values.dtype))
    if with_one:
        zeros = tf.zeros_like(tf.reduce_sum(values, axis=axis, keepdims=True))
        values = tf.concat([values, zeros], axis=axis)
    return tf.reduce_logsumexp(values, axis=axis)


def loss_supports_jit(loss: Any) -> bool:
    """Whether XLA can compile a loss's computation: False when it mines with a miner that declares
    `supports_jit = False` (a data-dependent number of tuples, or draws without an XLA kernel)."""
    miner = getattr(loss, "miner", None)
    return bool(getattr(miner, "supports_jit", True))


class EmbeddingLoss(keras.losses.Loss):
    """Base of the losses on a batch of embeddings: `loss(labels [m], embeddings [m, d]) -> scalar`.

    Subclasses implement `compute_terms(batch, tuples) -> {name: ElementLosses}`; this class checks
    the inputs, computes the `distance` matrix once (`batch.matrix`), runs the `miner`, and reduces
    every component with the `reducer` (then sums them, weighted). The scalar is left unchanged by
    Keras' own `reduction`.

    Class attributes a subclass sets:
      default_distance, default_reducer: used when the constructor gets None (today's behaviour).
      distance_kinds: the kinds of `Distance` the loss makes sense with, ("distance",),
        ("similarity",) or both; another is refused by `check_distance` with a one-line error.
      requires_miner: whether `compute_terms` needs tuples (triplet losses) or can take None.
      supports_ref: whether the loss takes `ref_embeddings` / `ref_labels`.

    Args:
      distance: a `pddm_tf.distances.Distance`, its registered name or config dict; None: the
        loss's default.
      reducer: a `pddm_tf.reducers.Reducer`, its registered name or config dict; None: the
        loss's default.
      miner: a `pddm_tf.miners.Miner`, its registered name or config dict, or None.
      name, reduction, dtype: Keras' `Loss` arguments.
    """

    default_distance: ClassVar[str] = "euclidean"
    default_reducer: ClassVar[str] = "mean"
    distance_kinds: ClassVar[tuple[str, ...]] = ("distance", "similarity")
    requires_miner: ClassVar[bool] = False
    supports_ref: ClassVar[bool] = True

    def __init__(self, distance: DistanceLike | None = None, reducer: ReducerLike | None = None,
                 miner: MinerLike | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.distance = get_distance(self.default_distance if distance is None else distance)
        self.check_distance(self.distance)
        self.reducer = get_reducer(self.default_reducer if reducer is None else reducer)
        if miner is None and self.requires_miner:
            raise ValueError(f"{type(self).__name__} needs a miner (e.g. 'semi_hard' or 'batch_hard'), got None")
        self.miner = None if miner is None else get_miner(miner)

    def check_distance(self, distance: Distance) -> None:
        """Raises ValueError when `distance` makes no sense for this loss (default: its kind is not
        in `distance_kinds`). Subclasses may add their own conditions."""
        if distance.kind not in self.distance_kinds:
            wanted = " or ".join(self.distance_kinds)
            closer = "larger" if distance.larger_is_closer else "smaller"
            raise ValueError(f"{type(self).__name__} needs a {wanted}; {distance!r} is a {distance.kind} "
                             f"({closer} is closer)")

    @property
    def variables(self) -> list[keras.Variable]:
        """The loss's state for the model to track and save: the miner's (a seeded sampler's
        position); subclasses with weights of their own add them."""
        return [] if self.miner is None else self.miner.variables

    # -- entry points ----------------------------------------------------------------------------

    def call(self, y_true: tf.Tensor, y_pred: Any) -> tf.Tensor:
        """Keras' entry: y_pred is embeddings [m, d], or {"embeddings", "ref_embeddings", "ref_labels"}."""
        labels = labels_from_y_true(y_true)
        if isinstance(y_pred, dict):
            ref_labels = y_pred.get("ref_labels")
            return self.compute(labels, y_pred["embeddings"], y_pred.get("ref_embeddings"),
                                None if ref_labels is None else labels_from_y_true(ref_labels))
        return self.compute(labels, y_pred)

    def compute(self, labels: tf.Tensor, embeddings: tf.Tensor, ref_embeddings: tf.Tensor | None = None,
                ref_labels: tf.Tensor | None = None) -> tf.Tensor:
        """The loss of a batch, mining with this loss's miner: labels [m] int, embeddings [m, d],
        optionally reference embeddings [n, d] and their labels [n] (e.g. a memory of past
        batches: anchors come from the batch, positives and negatives from the reference set) ->
        float scalar."""
        batch = self._batch(labels, embeddings, ref_embeddings, ref_labels)
        return self.reduce_terms(self.compute_terms(batch, self.mine(batch)))

    def from_indices(self, labels: Any, embeddings: Any = None, tuples: Any = None,
                     ref_embeddings: tf.Tensor | None = None, ref_labels: tf.Tensor | None = None,
                     **deprecated: Any) -> tf.Tensor:
        """The loss of given tuples (any miner's, or built with `Tuples.from_triplets` /
        `from_pairs` / `from_quadruplets`): labels [m], embeddings [m, d], tuples, and optionally
        the reference set; the same signature for every loss, `compute` without the mining step.

        The spellings before the contract (`from_indices(tuples, embeddings=None, distances=None)`,
        the margin loss's `from_indices(labels, tuples, distances)`) still work for one release,
        with a DeprecationWarning.
        """
        if isinstance(labels, Tuples) or isinstance(embeddings, Tuples):
            return self._deprecated_from_indices(labels, embeddings, tuples, ref_embeddings, **deprecated)
        if deprecated:
            raise TypeError(f"from_indices got unexpected arguments {sorted(deprecated)}")
        if embeddings is None or tuples is None:
            raise TypeError("from_indices(labels, embeddings, tuples, ref_embeddings=None, ref_labels=None) "
                            "needs labels, embeddings and tuples")
        batch = self._batch(labels, embeddings, ref_embeddings, ref_labels)
        return self.reduce_terms(self.compute_terms(batch, tuples))

    def _deprecated_from_indices(self, first: Any, second: Any, third: Any, fourth: Any = None,
                                 **kwargs: Any) -> Any:
        """The pre-contract spellings: (tuples, embeddings=None, distances=None) and the margin loss's
        (labels, tuples, distances)."""
        warn_deprecated(f"{type(self).__name__}.from_indices(tuples, embeddings, distances) is deprecated: "
                        "call from_indices(labels, embeddings, tuples)", stacklevel=3)
        if isinstance(first, Tuples):
            tuples, embeddings, distances = first, second, kwargs.get("distances", third)
            labels = None
        else:
            labels, tuples, distances = first, second, kwargs.get("distances", third)
            embeddings = None
        if distances is None and embeddings is None:
            raise ValueError("from_indices needs the batch's embeddings or its distances")
        if distances is None:
            if labels is None:  # the old spelling had no labels; losses on given tuples do not read them
                labels = tf.zeros(tf.shape(embeddings)[0], tf.int32)
            return self.from_indices(labels, embeddings, tuples)
        distances = tf.convert_to_tensor(distances)
        labels = tf.zeros(tf.shape(distances)[0], tf.int32) if labels is None else labels_from_y_true(labels)
        return self.reduce_terms(self.compute_terms(LossBatch.from_matrix(labels, distances, self.distance), tuples))

    # -- the steps -------------------------------------------------------------------------------

    def mine(self, batch: LossBatch) -> Tuples | None:
        """The miner's tuples on the batch's stopped matrix (as a dissimilarity), or None without one."""
        if self.miner is None:
            return None
        ref_embeddings, ref_labels = (batch.ref_embeddings, batch.ref_labels) if batch.has_ref else (None, None)
        return self.miner(batch.labels, batch.embeddings, self.distance.to_dissimilarity(batch.matrix),
                          ref_embeddings, ref_labels)

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        """The per-element losses of a batch, by component. `tuples` is the miner's (or the caller's
        of `from_indices`), None when the loss has no miner."""
        raise NotImplementedError

    def reduce_terms(self, terms: dict[str, ElementLosses]) -> tf.Tensor:
        """sum over components of weight * reducer(losses, mask, extra), in the loss's dtype."""
        total = tf.constant(0.0, self.dtype)
        for term in terms.values():
            total += term.weight * tf.cast(self.reducer(term.losses, term.mask, term.extra), self.dtype)
        return total

    def _batch(self, labels: tf.Tensor, embeddings: tf.Tensor, ref_embeddings: tf.Tensor | None,
               ref_labels: tf.Tensor | None) -> LossBatch:
        if (ref_embeddings is not None or ref_labels is not None) and not self.supports_ref:
            raise ValueError(f"{type(self).__name__} pairs samples within one batch: it does not take "
                             "ref_embeddings / ref_labels")
        return LossBatch.checked(labels, embeddings, self.distance, ref_embeddings, ref_labels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "distance": serialize_distance(self.distance),
                "reducer": serialize_reducer(self.reducer),
                "miner": None if self.miner is None else serialize_miner(self.miner)}


class PairLoss(EmbeddingLoss):
    """Base of the losses on pairs under a `distance`: by default every pair of the batch (positive:
    same label, not a self pair; negative: different labels), with a `miner` the pairs its tuples
    name (`LossBatch.tuple_masks`). Subclasses implement `pair_terms(matrix [m, n], positive
    [m, n] bool, negative [m, n] bool) -> {name: ElementLosses}`.
    """

    def __init__(self, distance: DistanceLike | None = None, miner: MinerLike | None = None,
                 reducer: ReducerLike | None = None, **kwargs: Any) -> None:
        # (distance, miner) in that order, as before the contract; the reducer after them.
        super().__init__(distance=distance, reducer=reducer, miner=miner, **kwargs)

    def compute_terms(self, batch: LossBatch, tuples: Tuples | None) -> dict[str, ElementLosses]:
        masks = batch.pair_masks() if tuples is None else batch.tuple_masks(tuples)
        return self.pair_terms(batch.matrix, *masks)

    def pair_terms(self, matrix: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> dict[str, ElementLosses]:
        """The per-element losses of the pairs: matrix [m, n] under the distance, masks [m, n] bool."""
        legacy = getattr(self, "_from_masks", None)
        if legacy is None:
            raise NotImplementedError(f"{type(self).__name__} must implement pair_terms")
        # A subclass written before the contract returns its scalar from `_from_masks`: one element.
        warn_deprecated(f"{type(self).__name__}._from_masks is deprecated: implement pair_terms, returning "
                        "per-element losses for the reducer", stacklevel=2)
        return {"loss": ElementLosses(tf.reshape(legacy(matrix, positive, negative), [1]))}


__all__ = ["ElementLosses", "EmbeddingLoss", "LossBatch", "PairLoss", "check_embeddings", "finite_number",
           "labels_from_y_true", "loss_supports_jit", "masked_logsumexp"]
