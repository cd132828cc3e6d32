"""Lazy package attributes (PEP 562): public names imported from their modules on first use.

The command line's `--help` must answer without importing TensorFlow, so the packages it passes
through (`pddm_tf`, `pddm_tf.cli`, `pddm_tf.methods`, `pddm_tf.training`) name their TensorFlow
modules' exports in a table and import each module only when one of its names is first used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str], before_import: Callable[[], None] | None = None
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package` for `table` (public name -> the
    module that holds it). A name is imported on first use and then stored in the package, so later
    look-ups skip `__getattr__`; `before_import` runs before each first use (e.g. to import every
    module at once). Usage, at the end of a package's `__init__.py`:

        __getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before_import is not None:
            before_import()
        value = getattr(importlib.import_module(table[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
