"""The `pddm-tf` subcommands, one module each; importing this package registers them all.

Every module here whose name does not start with `_` is imported (file-name order) and registers
its `pddm_tf.cli.command.Command` and flags, so a subcommand added as one new file is found
without being listed anywhere.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
