"""Checks of `pddm-tf` flag values, made before any work starts.

Every refused value gets one line that names the flag and what it allows; `pddm-tf` prints it and
exits with code 2 (a usage error) before anything is loaded, trained or written. The checks are the
commands' own (`pddm_tf.cli.command.Command.check`): `train` refuses exactly what
`TrainConfig.check` refuses (types, bounds from the config fields' metadata, the method's flags and
options, combinations, paths).

Pure Python with no TensorFlow import, so a refused command returns at once.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from absl import flags

from pddm_tf.cli import commands as _commands  # noqa: F401 - registers the subcommands and their flags
from pddm_tf.cli.command import COMMANDS
from pddm_tf.options import ConfigError

#: The exit code of a usage error: a flag refused before any work started.
EXIT_USAGE = 2
#: A refused flag value or combination (the library's `ConfigError`; the message is one line).
FlagError = ConfigError


def check_flags(command: str, values: Mapping[str, Any]) -> None:
    """Raises `FlagError` naming the first refused flag value of `pddm-tf <command>` (values: flag name ->
    value; absent names keep their defaults)."""
    check = COMMANDS.get(command).check
    if check is not None:
        check(values)


def usage_exit(message: str) -> NoReturn:
    """Prints a usage error as one line on stderr and exits with code 2."""
    print(f"pddm-tf: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def command_word(argv: list[str]) -> str | None:
    """The first argument that is not a flag (the subcommand), or None."""
    return next((arg for arg in argv[1:] if not arg.startswith("-")), None)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (the `flags_parser` of `app.run`), with a refused flag as one line and exit code 2.
    An unknown subcommand is refused as such first (its flags would be unknown too)."""
    word = command_word(argv)
    if word is not None and word not in COMMANDS:
        usage_exit(f"unknown command {word!r}: usage: pddm-tf {{{'|'.join(COMMANDS)}}} [--flags]")
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        usage_exit(str(error))
