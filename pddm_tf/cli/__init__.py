"""The command line, `pddm-tf <command> [flags]` (absl flags).

  main.py        `run`, the console script's entry point: plugins, recipe, checks, errors as one line
  command.py     `Command` and `COMMANDS`: a subcommand is one module of commands/ that registers one
  commands/      train.py, evaluate.py, export.py (each defines its own flags and registers itself)
  settings.py    the flags made from `TrainConfig`'s fields (type, default, help), the recipe, the config
  validation.py  the checks before any work (a refused value exits with code 2), one-line usage errors
  logs.py        TensorFlow imported quietly (C++ log level, start-up lines filtered)

`pddm-tf --help` answers in a fraction of a second: nothing here imports TensorFlow at the top (a
command's `run` imports it, at the CLI edge), and `run` is imported from main.py when first used
(PEP 562).
"""

from __future__ import annotations

from pddm_tf._lazy import lazy_attributes

__all__ = ["run"]


__getattr__, __dir__ = lazy_attributes(__name__, {"run": "pddm_tf.cli.main"})
