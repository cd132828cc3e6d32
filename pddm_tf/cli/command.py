"""`Command`: one `pddm-tf` subcommand, and the table of them.

A subcommand is one module of `pddm_tf.cli.commands` (found there by `pddm_tf.cli.commands`), which
defines its own absl flags and registers a `Command`: its name, one-line summary, a TensorFlow-free
check of the flag values made before any work (refusals: `ConfigError`, exit code 2), and `run`,
which does the work once the checks passed (and TensorFlow is imported, quietly, if it needs it).
No TensorFlow import here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from pddm_tf.registry import Registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class Command:
    """One `pddm-tf <name>` subcommand.

    Attributes:
      name: the word after `pddm-tf`.
      summary: one line for `pddm-tf --help`.
      run: does the work, reading `absl.flags.FLAGS`; a `ConfigError` it raises exits with code 2, a
        ValueError or OSError with one line and code 1.
      check: flag name -> value of every flag -> None, or `ConfigError` naming the refused flag; runs
        before any work and before TensorFlow is imported.
      needs_tensorflow: import TensorFlow quietly (`pddm_tf.cli.logs`) before `run`.
      trains: whether --recipe applies (its values are training settings).
    """

    name: str
    summary: str
    run: Callable[[], Any]
    check: Callable[[Mapping[str, Any]], None] | None = None
    needs_tensorflow: bool = True
    trains: bool = False


#: subcommand name -> `Command`.
COMMANDS: Registry[Command] = Registry("command")


def register_command(command: Command) -> Command:
    """Adds `command` to `COMMANDS` and returns it."""
    return COMMANDS.register(command.name, command)
