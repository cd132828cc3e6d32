"""Settings dataclasses nested in small groups, each field still reached by its flat flag name.

`TrainConfig`'s groups (`DataConfig`, `MethodConfig`, `RunConfig`, ...) hold a few settings and a few
sub-groups (`RunConfig.evaluation`, `MethodConfig.hdml`, ...), so that no constructor takes more than
about ten parameters (issue 30 item 3). A sub-group is a field made by `subgroup(cls)`; every other
field is a `pddm_tf.options.setting` whose flag is its `metadata["flag"]` or its name. Here:

* `settings_of(cls)`: every (flag, dotted path, Setting) of a group and its sub-groups, in field order;
* `get(obj, path)` and `replace_paths(obj, {path: value})`: read and change by dotted path;
* `grouped(where)`: a class decorator keeping the previous release's flat spellings of the fields that
  moved into a sub-group (`RunConfig(json=...)`, `config.run.json`, also through
  `dataclasses.replace`) working for one release, with a `PDDMDeprecationWarning` naming the new one.
  The type checker sees only the new spellings, so the package cannot use an old one unnoticed.

Pure Python, no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from pddm_tf._deprecation import warn_deprecated
from pddm_tf.options import Setting, field_setting

T = TypeVar("T")


def subgroup(cls: type) -> Any:
    """A dataclass field holding a `cls()` by default: a sub-group of settings."""
    return dataclasses.field(default_factory=cls, metadata={"group": cls})


def subgroups(cls: type) -> dict[str, type]:
    """Field name -> class of each sub-group of the dataclass `cls`."""
    return {field.name: field.metadata["group"] for field in dataclasses.fields(cls) if "group" in field.metadata}


def settings_of(cls: type, prefix: str = "") -> Iterator[tuple[str, str, Setting]]:
    """(flag, dotted path, Setting) of every setting of the dataclass `cls` and its sub-groups, in field order."""
    for field in dataclasses.fields(cls):
        if "group" in field.metadata:
            yield from settings_of(field.metadata["group"], f"{prefix}{field.name}.")
            continue
        spec = field_setting(field)
        assert spec is not None, f"{cls.__name__}.{field.name} needs a setting(...) or a subgroup(...)"
        yield field.metadata.get("flag") or field.name, prefix + field.name, spec


def get(obj: Any, path: str) -> Any:
    """The value at dotted `path` of `obj` (`get(run, "evaluation.json")` is `run.evaluation.json`)."""
    return functools.reduce(getattr, path.split("."), obj)


def replace_paths(obj: T, values: Mapping[str, Any]) -> T:
    """A copy of the dataclass `obj` with each dotted path of `values` set (sub-groups copied, not changed)."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        direct[head] = replace_paths(direct.get(head, getattr(obj, head)), inner)
    return dataclasses.replace(obj, **direct) if direct else obj  # type: ignore[type-var]


def spelled(cls: type, paths: list[str]) -> str:
    """The nested constructor keywords of dotted `paths` of `cls`: `evaluation=EvaluationConfig(json=...)`."""
    groups = subgroups(cls)
    parts: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        parts.setdefault(head, []).extend([rest] if rest else [])
    return ", ".join(f"{head}={groups[head].__name__}({spelled(groups[head], inner)})" if inner else f"{head}=..."
                     for head, inner in parts.items())


def moved_fields(cls: type) -> dict[str, str]:
    """The previous release's flat field names of `cls` (each its flag name) that moved into a sub-group ->
    their dotted path now."""
    return {flag: path for flag, path, _ in settings_of(cls) if "." in path}


def _caller_level() -> int:
    """The `warn_deprecated` stacklevel of the user's line calling a constructor, past `dataclasses.replace`."""
    level, frame = 2, sys._getframe(2)
    while frame.f_back is not None and frame.f_globals.get("__name__") == "dataclasses":
        level, frame = level + 1, frame.f_back
    return level


def grouped(where: str) -> Callable[[type[T]], type[T]]:
    """Class decorator of a settings dataclass with sub-groups, reached from a `TrainConfig` as `where`
    (e.g. "config.run"): its fields that moved into a sub-group keep their flat spelling for one release.

    A flat constructor keyword (`RunConfig(json="m.json")`) sets that field of the given sub-group (or of
    its default), so `dataclasses.replace(run, json=...)` works too; a flat attribute read
    (`run.json`) reads it from its sub-group. Both warn, naming the new spelling.
    """

    def decorate(cls: type[T]) -> type[T]:
        moved = moved_fields(cls)
        groups = subgroups(cls)
        original = cls.__init__

        @functools.wraps(original)
        def __init__(self: Any, **kwargs: Any) -> None:
            old = {name: kwargs.pop(name) for name in list(kwargs) if name in moved}
            if old:
                warn_deprecated(f"{cls.__name__}({', '.join(f'{name}=...' for name in old)}) is deprecated: use "
                                f"{cls.__name__}({spelled(cls, [moved[name] for name in old])})",
                                stacklevel=_caller_level())
                inner: dict[str, dict[str, Any]] = {}
                for name, value in old.items():
                    head, _, rest = moved[name].partition(".")
                    inner.setdefault(head, {})[rest] = value
                for head, values in inner.items():
                    base = kwargs.get(head)
                    kwargs[head] = replace_paths(groups[head]() if base is None else base, values)
            original(self, **kwargs)

        def __getattr__(self: Any, name: str) -> Any:
            # Only called for names that are not attributes (and never for a field, even while unpickling).
            if name not in moved:
                raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")
            warn_deprecated(f"{where}.{name} is deprecated: use {where}.{moved[name]}", stacklevel=2)
            return get(self, moved[name])

        # setattr: the type checker keeps the dataclass' own signature, so the package uses the new spellings.
        setattr(cls, "__init__", __init__)  # noqa: B010
        setattr(cls, "__getattr__", __getattr__)  # noqa: B010
        return cls

    return decorate


__all__ = ["get", "grouped", "moved_fields", "replace_paths", "settings_of", "spelled", "subgroup", "subgroups"]
