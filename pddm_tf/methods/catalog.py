"""The table of training methods: every built-in method's `MethodSpec`, loaded from its own file.

Importing this module imports each module of `pddm_tf.methods.library` whose name does not start
with `_` (each registers its spec in `METHOD_SPECS`), so a method added as one new file there is
found without being listed anywhere. No TensorFlow import: `pddm-tf --help` and the checks made
before any work read this table.
"""

from __future__ import annotations

import importlib
import pkgutil

from pddm_tf.methods import library
from pddm_tf.methods.spec import METHOD_SPECS, MethodSpec

for _module in sorted(pkgutil.iter_modules(library.__path__), key=lambda module: module.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{library.__name__}.{_module.name}")

#: The built-in methods' names (those registered before any plugin), in file-name order.
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_SPECS)


def get_spec(name: str) -> MethodSpec:
    """The spec of method `name`; a ValueError listing the known methods otherwise."""
    return METHOD_SPECS.get(name)


def methods_help() -> str:
    """Every method with its summary, flags and options (types, defaults, bounds): `--help_methods`."""
    lines = []
    for spec in METHOD_SPECS.values():
        lines.append(f"{spec.name}: {spec.summary}")
        if spec.flags:
            lines.append(f"    flags: {', '.join(f'--{flag}' for flag in spec.flags)}")
        for name, option in spec.options.items():
            bound = f", {option.bound.describe()}" if option.bound else ""
            choices = f", one of {'|'.join(option.choices)}" if option.choices else ""
            lines.append(f"    --loss_options {name}: {option.describe_kind()}, default {option.default!r}{bound}"
                         f"{choices}: {option.help}")
    return "\n".join(lines)
