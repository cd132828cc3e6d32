"""Checks that a training run learns something: `LearningCheck`."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

_logger = logging.getLogger(__name__)


class NothingLearnedError(ValueError):
    """Raised by `LearningCheck(strict=True)` after an epoch in which nothing was learned."""


class LearningCheck(keras.callbacks.Callback):
    """Warns, or with `strict` stops training, after an epoch in which nothing was learned.

    Read from the epoch's logs (the means over its steps, so no extra work per step):

    * `valid_fraction` 0: no batch of the epoch held a valid tuple (a PDDM quadruplet needs a
      positive pair and negatives), so every loss and gradient was zero;
    * `loss` exactly 0: every step's loss was zero (the losses are non-negative), so nothing moved.

    Args:
      strict: raise `NothingLearnedError` instead of warning.

    Attributes:
      warnings: the messages of the epochs that learned nothing, in order.
    """

    def __init__(self, strict: bool = False) -> None:
        super().__init__()
        self.strict = bool(strict)
        self.warnings: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        problems = []
        if "valid_fraction" in logs and _mean(logs["valid_fraction"]) == 0.0:
            problems.append("valid_fraction stayed 0 (no batch held a valid tuple)")
        if "loss" in logs and _mean(logs["loss"]) == 0.0:
            problems.append("the loss was exactly 0 at every step")
        if not problems:
            return
        message = (f"epoch {epoch + 1} learned nothing: {' and '.join(problems)}; check batch_per_class, "
                   "batch_classes and that the training classes have two or more distinct images")
        if self.strict:
            raise NothingLearnedError(message)
        self.warnings.append(message)
        _logger.warning("%s", message)


def _mean(value: Any) -> float:
    # Multi-worker logs are [1] tensors (see EmbeddingModel._record); the others are scalars.
    return float(np.mean(keras.ops.convert_to_numpy(value)))
