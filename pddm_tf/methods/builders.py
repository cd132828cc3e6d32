"""Models of named methods: `build_model(method, backbone, embedding_dim, **options)`.

Used by `pddm-tf train` (through `pddm_tf.training`) and by the benchmarks, so every method is built
the same way around the same backbone and embedding size. The methods are the `MethodSpec`s of
`METHOD_SPECS` (`pddm_tf.methods.spec`); this module is their keyword-argument interface. No
TensorFlow import here: a spec's builder imports it when a model is first built.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pddm_tf.methods.catalog import METHOD_SPECS
from pddm_tf.methods.spec import COMMON_SETTINGS, MethodSpec, register_method

#: method name -> `MethodSpec`; `METHODS[name](backbone, embedding_dim, **options)` builds its model.
METHODS = METHOD_SPECS

#: Constructor arguments of every Keras loss, not hyperparameters of the method.
_KERAS_LOSS_ARGUMENTS = frozenset({"self", "name", "reduction", "dtype"})


def loss_hyperparameters(loss_class: type) -> tuple[str, ...]:
    """The hyperparameters of a loss class: its constructor's named arguments but Keras' own."""
    return tuple(p.name for p in inspect.signature(loss_class).parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _KERAS_LOSS_ARGUMENTS)


class _MethodOptions(Mapping[str, tuple[str, ...]]):
    """method name -> the keywords `build_model` takes for it (its options, its flags, dropout and
    training_classes), read from the specs, so a method registered later is included."""

    def __getitem__(self, method: str) -> tuple[str, ...]:
        return METHOD_SPECS[method].accepted()

    def __iter__(self) -> Iterator[str]:
        return iter(METHOD_SPECS)

    def __len__(self) -> int:
        return len(METHOD_SPECS)


METHOD_OPTIONS: Mapping[str, tuple[str, ...]] = _MethodOptions()


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in sorted(names))


def build_model(method: str, backbone: Any, embedding_dim: int = 64, *,
                loss_options: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """The model of a named method around `backbone`, not yet compiled.

    Options are strict: each method takes only its own options, the general flags it uses and the
    common settings dropout and training_classes (`METHOD_OPTIONS[method]`; `pddm-tf --help_methods`
    lists them), and any other raises a ValueError naming it, so a misspelt or misplaced option is
    never ignored. To configure whichever method from one full set of settings (as the benchmarks
    do), pass `**method_options(method, **settings)`, which keeps the settings the method takes.

    Args:
      method: a key of `METHODS` (`pddm-tf --help_methods` lists them).
      backbone: images -> features.
      embedding_dim: d.
      loss_options: the method's own options as one mapping (what `--loss_options` gives), merged with
        `options`.
      options: option, general flag or common setting -> value (`num_classes` is accepted for
        training_classes, its name before the method specs).

    Raises:
      ValueError: an unknown method, or an option the method does not take (`ConfigError`, a ValueError,
        for a value of the wrong type or out of bounds).
    """
    spec: MethodSpec = METHOD_SPECS.get(method)
    if "num_classes" in options and "num_classes" not in spec.options:
        options["training_classes"] = options.pop("num_classes")
    return spec(backbone, embedding_dim, loss_options=loss_options, **options)


def method_options(method: str, **settings: Any) -> dict[str, Any]:
    """The `settings` that `method` takes: what to pass to `build_model` when one full set of settings
    (e.g. the benchmarks' flags) configures any method. Settings only other methods take are dropped; a
    name that no method takes (a misspelling) raises. A method's own options are taken from
    `loss_options` (a mapping), kept for the methods that have options.

    Raises:
      ValueError: an unknown method, or a setting no method takes.
    """
    spec = METHOD_SPECS.get(method)
    if "num_classes" in settings:
        settings["training_classes"] = settings.pop("num_classes")
    known = set(COMMON_SETTINGS).union(*(other.flags for other in METHOD_SPECS.values())) | {"loss_options"}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"no method takes the option {_names(unknown)}; {method!r} takes "
                         f"{_names((*spec.flags, *COMMON_SETTINGS))}, and the methods' options are {_names(known)}")
    # A method's own options come only from loss_options: a flag of the same name (e.g. the PDDM margin
    # alpha) is another setting than the option (the multi-similarity loss's alpha).
    kept = {name: value for name, value in settings.items() if name in spec.flags or name in COMMON_SETTINGS}
    if settings.get("loss_options") and spec.options:
        kept["loss_options"] = settings["loss_options"]
    return kept


__all__ = ["METHODS", "METHOD_OPTIONS", "build_model", "loss_hyperparameters", "method_options", "register_method"]
