"""The command line, `pddm-tf train` / `pddm-tf evaluate` / `pddm-tf export` (absl flags).

  main.py        the flags and the three commands; `run` is the console script's entry point
  validation.py  every flag value checked before any work starts (a refused one exits with code 2)
  logs.py        TensorFlow imported quietly (C++ log level, start-up lines filtered)

`pddm-tf --help` answers in a fraction of a second: nothing here imports TensorFlow at the top,
and `run` is imported from main.py when first used (PEP 562), so `TrainConfig`, which checks its
values with validation.py, does not import the flags.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["run"]


def __getattr__(name: str) -> Any:
    if name != "run":
        raise AttributeError(f"module 'pddm_tf.cli' has no attribute {name!r}")
    value = importlib.import_module("pddm_tf.cli.main").run
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"run"})
