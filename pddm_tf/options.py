"""Typed settings with their bounds: what a configuration field or a method's option accepts.

One vocabulary for every setting the library reads from users: `TrainConfig`'s fields (whose
`dataclasses.field` metadata carry a `Setting`), a training method's own options
(`pddm_tf.methods.spec.MethodSpec.options`) and the `pddm-tf` flags made from both. A value is
checked once, where it enters (a flag, a JSON `--loss_options` object, a constructor keyword), and
a refused one raises `ConfigError` with one line naming the setting, the value and what is allowed.

Pure Python, no TensorFlow: `pddm-tf --help` and the checks before any work import it.

    >>> Setting(int, 4, "images per class", Bound(2)).parse("batch_per_class", 1)
    Traceback (most recent call last):
    ...
    pddm_tf.options.ConfigError: batch_per_class=1 is out of range: allowed >= 2
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A setting or combination of settings that is refused before any work; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Bound:
    """The allowed numbers: low <= value (< if low_open), value <= high (< if high_open), or one of `choices`.

    None for `low` or `high` leaves that side open; `note` says what the edge values mean or where
    the bound comes from (e.g. the memory a larger size would take).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""
    choices: tuple[float, ...] = ()

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.choices:
            return " or ".join(_number(choice) for choice in self.choices)
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        text = " and ".join(parts) if parts else "a finite number"
        return f"{text} ({self.note})" if self.note else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


#: The Python types a setting may declare, and how a message names them.
_TYPE_NAMES = {bool: "a bool", int: "an integer", float: "a number", str: "a string", dict: "a JSON object",
               tuple: "a list"}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One typed setting: its type(s), default, one-line help, numeric bound and string choices.

    `kind` is `bool`, `int`, `float`, `str`, `dict` (a JSON object, e.g. a miner's
    `{"name": ..., "config": {...}}`), `tuple` (a list of strings) or a tuple of these (any of
    them). An int is accepted for a float (and converted); a bool is never a number. `optional`:
    None is allowed (it means "unset": the default of whoever reads it).
    """

    kind: type | tuple[type, ...]
    default: Any
    help: str
    bound: Bound | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False

    @property
    def kinds(self) -> tuple[type, ...]:
        return self.kind if isinstance(self.kind, tuple) else (self.kind,)

    def describe_kind(self) -> str:
        return " or ".join(_TYPE_NAMES.get(kind, kind.__name__) for kind in self.kinds)

    def parse(self, name: str, value: Any) -> Any:
        """`value` converted to the setting's type; `ConfigError` naming `name` if it is refused."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{name} needs {self.describe_kind()}, got None")
        kinds = self.kinds
        if isinstance(value, bool):
            if bool not in kinds:
                raise ConfigError(f"{name}={value!r} is a bool; expected {self.describe_kind()}")
        elif isinstance(value, int) and int not in kinds:
            if float not in kinds:
                raise ConfigError(f"{name}={value!r} is an integer; expected {self.describe_kind()}")
            value = float(value)
        elif isinstance(value, float) and float not in kinds:
            raise ConfigError(f"{name}={value!r} is not {self.describe_kind()}")
        elif isinstance(value, str) and str not in kinds:
            raise ConfigError(f"{name}={value!r} is a string; expected {self.describe_kind()}")
        elif isinstance(value, Mapping):
            if dict not in kinds:
                raise ConfigError(f"{name}={value!r} is an object; expected {self.describe_kind()}")
            value = dict(value)
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if tuple not in kinds:
                raise ConfigError(f"{name}={value!r} is a list; expected {self.describe_kind()}")
            if not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{name}={value!r}: expected a list of strings")
            value = tuple(value)
        elif not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"{name}={value!r} is a {type(value).__name__}; expected {self.describe_kind()}")
        if self.choices and isinstance(value, str) and value not in self.choices:
            raise ConfigError(f"{name}={value}: expected one of {', '.join(self.choices)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bound = self.bound or Bound()
            if not bound.allows(value):
                raise ConfigError(f"{name}={value} is out of range: allowed {bound.describe()}")
        return value


def setting(default: Any, help: str, kind: type | tuple[type, ...] | None = None, *, bound: Bound | None = None,
            choices: tuple[str, ...] = (), optional: bool = False, flag: str | None = None) -> Any:
    """A dataclass field holding `default` whose metadata is its `Setting` (read by the checks and by
    the command line, which makes one flag per field; `flag` names the flag when it differs from the field).

    `kind` defaults to the type of `default`; give it when the default is None (then `optional` too).
    """
    if kind is None:
        kind = type(default)
    spec = Setting(kind, default, help, bound, choices, optional or default is None)
    return dataclasses.field(default=default, metadata={"setting": spec, "flag": flag})


def field_setting(field: dataclasses.Field) -> Setting | None:
    """The `Setting` of a dataclass field made with `setting`, or None."""
    return field.metadata.get("setting")
