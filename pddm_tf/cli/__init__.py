"""The command line, `pddm-tf train` / `pddm-tf evaluate` / `pddm-tf export` (absl flags).

  main.py        the flags and the three commands; `run` is the console script's entry point
  validation.py  every flag value checked before any work starts (a refused one exits with code 2)
  logs.py        TensorFlow imported quietly (C++ log level, start-up lines filtered)

`pddm-tf --help` answers in a fraction of a second: nothing here imports TensorFlow at the top,
and `run` is imported from main.py when first used (PEP 562), so `TrainConfig`, which checks its
values with validation.py, does not import the flags.
"""

from __future__ import annotations

from pddm_tf._lazy import lazy_attributes

__all__ = ["run"]


__getattr__, __dir__ = lazy_attributes(__name__, {"run": "pddm_tf.cli.main"})
