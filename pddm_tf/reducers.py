"""Reducers: how an embedding loss turns its per-element loss terms into one scalar.

Every embedding loss (`pddm_tf.losses.EmbeddingLoss`) computes per-element terms (one per pair,
triplet, anchor or quadruplet) and hands each component to its `reducer`, pytorch-metric-learning's
reducers in Keras terms. A reducer selects the elements it averages and divides their sum by a
divisor:

    reducer(losses, mask=None, extra=0.0) = (sum_{selected} losses + extra) / divisor

    "mean"          MeanReducer          every element that exists (mask), divisor = their count
    "avg_non_zero"  AvgNonZeroReducer    every element, divisor = the count of non-zero ones
    "sum"           SumReducer           every element, divisor = 1
    "threshold"     ThresholdReducer     elements with low < loss < high, divisor = their count

`mask` says which elements exist (padding and invalid rows are False); `extra` is a regulariser
summed over the same elements that shares the division (the margin loss's beta term). Divisors are
counts, floored at 1: no element gives 0 (plus `extra`), never NaN. Reducers are plain objects, registered by
`name` like miners (`get_reducer`, `serialize_reducer`), so a loss's config holds them as
{"name", "config"}; they trace under `tf.function` and run under any distribution strategy (they
see one replica's terms, as the loss does).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import tensorflow as tf

from pddm_tf._named import Named, get_named, serialize_named

#: Name -> `Reducer` subclass; a subclass that sets its own `name` registers itself here.
REDUCERS: dict[str, type[Reducer]] = {}


class Reducer(Named, table=REDUCERS, kind="reducer"):
    """Turns per-element losses into a scalar: `reducer(losses [any shape], mask=None, extra=0.0)`
    = (sum of the selected losses + extra) / max(divisor, 1).

    Subclasses set `name` and implement `select` (which elements are summed) and `divisor` (what
    their sum is divided by); arguments go in `get_config`. Defining one registers it in `REDUCERS`.
    """

    def __call__(self, losses: tf.Tensor, mask: tf.Tensor | None = None,
                 extra: tf.Tensor | float = 0.0) -> tf.Tensor:
        """The reduced loss, a scalar of losses' dtype (`extra`, usually 0, when no element is selected).

        Args:
          losses: per-element losses, any shape, finite.
          mask: bool, losses' shape: the elements that exist (default: all).
          extra: a scalar added to the selected sum before the division (a regulariser that shares
            the divisor).
        """
        losses = tf.convert_to_tensor(losses)
        mask = tf.ones_like(losses, tf.bool) if mask is None else tf.convert_to_tensor(mask, tf.bool)
        selected = self.select(losses, mask)
        total = tf.reduce_sum(tf.where(selected, losses, tf.zeros_like(losses))) + extra
        return total / tf.maximum(tf.cast(self.divisor(losses, selected), losses.dtype), 1.0)

    def select(self, losses: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Which elements are summed, bool of losses' shape (default: those that exist)."""
        return mask

    def divisor(self, losses: tf.Tensor, selected: tf.Tensor) -> tf.Tensor:
        """What the selected sum is divided by: a count, scalar (floored at 1 by `__call__`)."""
        raise NotImplementedError


def _count(mask: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.cast(mask, tf.float32))


class MeanReducer(Reducer):
    """The mean over the elements that exist, zero losses included: easy elements dilute the loss.

    Example:
      >>> float(MeanReducer()(tf.constant([0.0, 1.0, 2.0, 5.0]), tf.constant([True, True, True, False])))
      1.0
    """

    name = "mean"

    def divisor(self, losses: tf.Tensor, selected: tf.Tensor) -> tf.Tensor:
        return _count(selected)


class AvgNonZeroReducer(Reducer):
    """The sum over the elements that exist, divided by how many are non-zero: as training makes
    most elements easy (zero), the loss of the hard ones keeps its scale.

    Example:
      >>> float(AvgNonZeroReducer()(tf.constant([0.0, 1.0, 2.0, 5.0]), tf.constant([True, True, True, False])))
      1.5
    """

    name = "avg_non_zero"

    def divisor(self, losses: tf.Tensor, selected: tf.Tensor) -> tf.Tensor:
        return _count(selected & (losses > 0))


class SumReducer(Reducer):
    """The sum over the elements that exist: the loss scale grows with the number of elements.

    Example:
      >>> float(SumReducer()(tf.constant([0.0, 1.0, 2.0, 5.0]), tf.constant([True, True, True, False])))
      3.0
    """

    name = "sum"

    def divisor(self, losses: tf.Tensor, selected: tf.Tensor) -> tf.Tensor:
        return tf.constant(1.0)


class ThresholdReducer(Reducer):
    """The mean over the elements that exist with low < loss < high (a bound of None is open):
    drops the easy elements below `low` and the outliers above `high`.

    Args:
      low: elements whose loss is not above this are left out (None: no lower bound).
      high: elements whose loss is not below this are left out (None: no upper bound).

    Example:
      >>> float(ThresholdReducer(low=0.5)(tf.constant([0.0, 1.0, 2.0, 5.0]), tf.constant([True, True, True, False])))
      1.5
    """

    name = "threshold"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        for label, bound in (("low", low), ("high", high)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)
                                      or not math.isfinite(bound)):
                raise ValueError(f"ThresholdReducer: {label} must be a finite number or None, got {bound!r}")
        if low is not None and high is not None and not low < high:
            raise ValueError(f"ThresholdReducer: need low < high, got {low} and {high}")
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)

    def select(self, losses: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        if self.low is not None:
            mask = mask & (losses > self.low)
        if self.high is not None:
            mask = mask & (losses < self.high)
        return mask

    def divisor(self, losses: tf.Tensor, selected: tf.Tensor) -> tf.Tensor:
        return _count(selected)

    def get_config(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


def serialize_reducer(reducer: Reducer) -> dict[str, Any]:
    """{"name": registered name, "config": constructor arguments}, as a loss's config holds it."""
    return serialize_named(reducer, Reducer)


def get_reducer(identifier: str | dict[str, Any] | Reducer) -> Reducer:
    """A `Reducer` from its registered name (default arguments), `serialize_reducer`'s dict, or itself.

    Raises:
      ValueError: an unknown name, listing the known ones, or a Reducer whose class has no name.
    """
    return get_named(identifier, Reducer)
