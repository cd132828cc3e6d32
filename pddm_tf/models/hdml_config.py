"""`HDMLModel`'s settings, grouped by concern (METHODS.md section 3; issue 30 item 3).

    hardness    HardnessSchedule   how hard the synthetic negatives are and how much they weigh, as
                                   training goes: alpha, initial_easiness, beta and the running means'
                                   window and initial value
    synthesis   SynthesisConfig    the networks that make them: the generator (input, width), its loss
                                   J_gen (soft_weight, softmax_scale) and the generator's and the
                                   label-preserving classifier's optimisers

Both are frozen, checked where they are made (one line naming the field: a ValueError for a value out
of range, a TypeError for one that is not a number) and
Keras-serialisable (`get_config` / `from_config`, registered as "pddm_tf>..."). Their fields keep the
names of the flat `HDMLModel` keywords of the previous release (`HDMLModel(alpha=90.0)` is now
`HDMLModel(hardness=HardnessSchedule(alpha=90.0))`); `take_flat_settings` maps those keywords, which
still work for one release with a DeprecationWarning naming the new spelling.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import MutableMapping
from typing import Any

import keras

from pddm_tf._deprecation import warn_deprecated
from pddm_tf.models.hdml_ops import GENERATOR_INPUTS


class _Settings:
    """get_config / from_config of a frozen dataclass of plain values."""

    def get_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        return cls(**config)

    def _check_numbers(self, *names: str, optional: tuple[str, ...] = ()) -> None:
        """A TypeError naming the first of these fields that is not a number (or None, if `optional`), a
        ValueError naming one that is NaN or infinite."""
        for name in names:
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):  # an infinite rate or scale trains to NaN
                raise ValueError(f"{name} must be finite, got {value!r}")

    def _coerce(self, **types: Any) -> None:
        """Stores each field as its type (a frozen dataclass: through object.__setattr__)."""
        for name, kind in types.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, kind(value))


@keras.saving.register_keras_serializable(package="pddm_tf")
@dataclasses.dataclass(frozen=True, kw_only=True)
class HardnessSchedule(_Settings):
    """How hard HDML's synthetic negatives are and how much they weigh, over training (METHODS.md
    equations 3.2, 3.7 and 3.9; the derivation of the defaults is in `pddm_tf.models.hdml_ops`).

    Two running means drive it, each the mean of a block of `window` steps and `initial_running_mean`
    until the first block completes: J_avg (of the weighted real metric loss) sets the hardness
    factor exp(-alpha / J_avg), J_gen_avg the real-sample weight w = exp(-beta / J_gen_avg).

    Args:
      alpha: hardness temperature of the interpolation; None (default) calibrates it at the end of
        the first block so that the hardness factor is `initial_easiness` then; 90 is the original's.
      initial_easiness: e_0, the hardness factor right after calibration, in (0, 1).
      beta: temperature of the real/synthetic weighting (1e4; 5e3 suggested for CUB), >= 0.
      window: number of steps of a running-mean block (64).
      initial_running_mean: value of the running means until the first block completes, > 0.
    """

    alpha: float | None = None
    initial_easiness: float = 0.5
    beta: float = 1e4
    window: int = 64
    initial_running_mean: float = 1e6

    def __post_init__(self) -> None:
        self._check_numbers("alpha", "initial_easiness", "beta", "window", "initial_running_mean", optional=("alpha",))
        if self.alpha is not None and not self.alpha >= 0:
            raise ValueError(f"alpha must be non-negative (or None to calibrate it), got {self.alpha}")
        if not 0.0 < self.initial_easiness < 1.0:
            raise ValueError(f"initial_easiness must be in (0, 1), got {self.initial_easiness}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be non-negative, got {self.beta}")
        if not _whole(self.window):
            raise ValueError(f"window must be a positive whole number of steps, got {self.window}")
        if not self.initial_running_mean > 0:
            raise ValueError(f"initial_running_mean must be > 0, got {self.initial_running_mean}")
        self._coerce(alpha=float, initial_easiness=float, beta=float, window=int, initial_running_mean=float)


@keras.saving.register_keras_serializable(package="pddm_tf")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthesisConfig(_Settings):
    """The networks that turn HDML's hardened embeddings into synthetic negatives (METHODS.md
    equations 3.3-3.6 and 3.8): the generator G, its loss J_gen = J_recon + J_soft, and the optimisers
    of G and of the label-preserving classifier W (the metric network's is the compiled one).

    Args:
      generator_input: "single" (default, the original's: G takes single embeddings) or "anchor_pair"
        ([anchor; sample] pairs; see `HDMLModel`).
      generator_units: hidden width of the generator (512).
      soft_weight: lambda, the J_soft vs J_recon trade-off, in [0, 1] (0.5).
      softmax_scale: s, the factor on J_soft (the original's 1e4), >= 0. With beta it sets how fast the
        weight moves to synthetic samples (only beta / s matters while s * CE dominates J_recon).
      generator_learning_rate, classifier_learning_rate: learning rates (> 0) of the two extra
        optimisers, which the model creates itself: Adam, or AdamW when the matching weight decay is
        positive (`HDMLModel.compile(generator_optimizer=..., classifier_optimizer=...)` replaces either).
      generator_weight_decay, classifier_weight_decay: their decoupled (AdamW) weight decay, >= 0; 0
        (default) as the original, which regularises the metric network only.
    """

    generator_input: str = "single"
    generator_units: int = 512
    soft_weight: float = 0.5
    softmax_scale: float = 1e4
    generator_learning_rate: float = 1e-2
    classifier_learning_rate: float = 1e-3
    generator_weight_decay: float = 0.0
    classifier_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.generator_input not in GENERATOR_INPUTS:
            raise ValueError(f"unknown generator_input {self.generator_input!r}; expected one of {GENERATOR_INPUTS}")
        self._check_numbers("generator_units", "soft_weight", "softmax_scale", "generator_learning_rate",
                            "classifier_learning_rate", "generator_weight_decay", "classifier_weight_decay")
        if not _whole(self.generator_units):
            raise ValueError(f"generator_units must be a positive whole number, got {self.generator_units}")
        if not 0.0 <= self.soft_weight <= 1.0:
            raise ValueError(f"soft_weight must be in [0, 1], got {self.soft_weight}")
        if not self.softmax_scale >= 0:
            raise ValueError(f"softmax_scale must be non-negative, got {self.softmax_scale}")
        for name in ("generator_learning_rate", "classifier_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("generator_weight_decay", "classifier_weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        self._coerce(generator_units=int, soft_weight=float, softmax_scale=float, generator_learning_rate=float,
                     classifier_learning_rate=float, generator_weight_decay=float, classifier_weight_decay=float)


def _whole(value: Any) -> bool:
    """A positive whole number (64 or 64.0; not True, NaN or 2.5)."""
    return not isinstance(value, bool) and value >= 1 and float(value).is_integer()


#: The `HDMLModel` argument of each settings group, and its class.
GROUPS: dict[str, type[_Settings]] = {"hardness": HardnessSchedule, "synthesis": SynthesisConfig}
#: The flat keywords of the previous release -> the group that holds them (same field name).
MOVED: dict[str, str] = {field.name: group for group, kind in GROUPS.items()
                         for field in dataclasses.fields(kind)}  # type: ignore[arg-type]


def take_flat_settings(given: dict[str, Any], flat: MutableMapping[str, Any], caller: str = "HDMLModel",
                       warn: bool = True) -> dict[str, Any]:
    """The settings groups of `given` (group name -> object or None), with the previous release's flat
    keywords (removed from `flat`, e.g. a constructor's **kwargs) folded in.

    Warns once (DeprecationWarning naming the new spelling, with the values) when there is any and
    `warn`; a flat keyword together with the group that holds it is a ValueError. A group given as a dict (its
    `get_config`, or Keras' serialised form) is rebuilt; None is the group's defaults.
    """
    moved = {name: flat.pop(name) for name in list(flat) if name in MOVED}
    if moved and warn:
        spelled = ", ".join(f"{group}={GROUPS[group].__name__}("
                            + ", ".join(f"{name}={value!r}" for name, value in moved.items() if MOVED[name] == group)
                            + ")" for group in GROUPS if any(MOVED[name] == group for name in moved))
        warn_deprecated(f"{caller}({', '.join(f'{name}=...' for name in moved)}) is deprecated: use "
                        f"{caller}({spelled})", stacklevel=3)
    groups = {}
    for group, kind in GROUPS.items():
        value = given.get(group)
        fields = {name: moved[name] for name in moved if MOVED[name] == group}
        if fields and value is not None:
            raise ValueError(f"pass {group}={kind.__name__}(...) or the deprecated {', '.join(fields)}=..., "
                             "not both")
        if isinstance(value, dict):
            value = (keras.saving.deserialize_keras_object(value) if "class_name" in value
                     else kind.from_config(value))
        if value is None:
            value = kind(**fields)
        if not isinstance(value, kind):
            raise TypeError(f"{caller}({group}=...) takes a {kind.__name__}, got {type(value).__name__}")
        groups[group] = value
    return groups


def deprecated_setting(model: Any, name: str) -> Any:
    """`model.<name>`, a flat setting of the previous release (`model.beta`), read from its group
    (`model.hardness.beta`) with a DeprecationWarning naming it; an AttributeError for any other name.
    For `HDMLModel.__getattr__`: not class properties, since Keras' saving reads every name of dir(model)."""
    if name not in MOVED:
        raise AttributeError(f"'{type(model).__name__}' object has no attribute '{name}'")
    group = MOVED[name]
    warn_deprecated(f"{type(model).__name__}.{name} is deprecated: use model.{group}.{name}", stacklevel=3)
    return getattr(getattr(model, group), name)


__all__ = ["GROUPS", "MOVED", "HardnessSchedule", "SynthesisConfig", "deprecated_setting", "take_flat_settings"]
