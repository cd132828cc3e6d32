"""What a training method is: a `MethodSpec`, one object in one file, and the table of them.

A method is its name, its builder, its own typed options (`Setting`: type, default, bounds, help;
set with `--loss_options` / `MethodConfig.options`) and the general method flags it uses (`--rerank`,
`--pddm_normalize_inputs`, `--mining`, ...: the settings of `MethodConfig` and of its `pddm`, `hdml`
and `dc` groups), each with the method's default. The command line's checks, `--help`,
`--loss_options` and `--plugins` all read the one table `METHOD_SPECS`, so a plugin method gets
exactly what a built-in one gets.

Why specs and builders share a file and still import no TensorFlow: the table must be readable by
`pddm-tf --help` and by the checks that run before any work, which must not pay for importing
TensorFlow, while a builder needs the library's Keras classes. A builder reaches them through the
package's lazy public names (`pddm_tf.TripletLoss`, resolved on first use, PEP 562), so a method's
file imports only this module and `pddm_tf`, and TensorFlow is imported when a model is first
built. A spec-module/builder-module pair would also work but would make a method two files that
must be kept in step; a builder named by a dotted string would hide it from the type checker.

The built-in methods are the modules of `pddm_tf.methods.library` (one file each, found by
`pddm_tf.methods.catalog`); docs: /METHOD_SPEC.md of the worktree, `docs/adding_a_method.md`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from pddm_tf._deprecation import warn_deprecated
from pddm_tf._setting_groups import get, grouped, replace_paths, settings_of, subgroup
from pddm_tf.options import Bound, ConfigError, Setting, setting
from pddm_tf.registry import Registry

#: builder(backbone, embedding_dim, settings) -> an EmbeddingModel, not compiled; `settings` holds the
#: method's options and flags (each given value or the method's default), "dropout" (before the embedding
#: projection) and "training_classes" (the number of training classes, None if unknown).
Builder = Callable[[Any, int, Mapping[str, Any]], Any]
#: check(values): raises `ConfigError` for a combination of the whole run's settings (flat flag name ->
#: value, after defaults) that the method cannot train, before any work.
Check = Callable[[Mapping[str, Any]], None]
#: Settings every builder receives besides its options and flags.
COMMON_SETTINGS = ("dropout", "training_classes")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PDDMConfig:
    """The flags of the PDDM methods (METHODS.md sections 1 and 2): the unit's inputs, mining, the loss margins."""

    mining: str | None = setting(None, "PDDM methods: quadruplets per batch, one per positive pair or the single "
                                 "hardest (the paper).", str, choices=("per_pair", "hardest"))
    mining_score: str | None = setting(None, "PDDM methods: the similarity mining ranks pairs by (default: the "
                                       "method's own).", str, choices=("pddm", "euclidean"))
    normalize_inputs: bool | None = setting(
        None, "PDDM methods: L2-normalise the PDDM's inputs u = |f_i - f_j| and v = (f_i + f_j)/2 (a reading of "
        "the paper, unconfirmed; the score then cannot see the distance of two unit embeddings). Default off.",
        bool, flag="pddm_normalize_inputs")
    alpha: float | None = setting(None, "PDDM methods: margin of the PDDM-score hinge (E_m).", float, bound=Bound(0))
    beta: float | None = setting(None, "PDDM methods: margin of the squared-distance hinge (E_e).", float,
                                 bound=Bound(0))
    embedding_weight: float | None = setting(None, "PDDM methods: lambda, the weight of the embedding loss E_e.",
                                             float, bound=Bound(0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HDMLConfig:
    """The flags of the HDML methods (METHODS.md section 3): the hardness and weighting temperatures and the
    generator's input."""

    alpha: float | None = setting(None, "HDML: hardness temperature alpha; unset: calibrated at the end of the "
                                  "first 64-step block for unit-norm embeddings (HDMLModel); 90 = the "
                                  "original's constant.", float, bound=Bound(0, low_open=True), flag="hdml_alpha")
    beta: float | None = setting(None, "HDML: weighting temperature beta.", float, bound=Bound(0, low_open=True),
                                 flag="hdml_beta")
    generator_input: str | None = setting(None, "HDML: the generator takes single embeddings (the original) "
                                          "or [anchor; sample] pairs.", str, choices=("single", "anchor_pair"),
                                          flag="hdml_generator_input")
    synthetic: bool | None = setting(None, "HDML: train on the synthetic negatives; off trains the base loss "
                                     "alone on HDML's rows, the exact 'without HDML' twin of a run.", bool,
                                     flag="hdml_synthetic")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DivideAndConquerConfig:
    """The flags of the Divide-and-Conquer methods (METHODS.md section 4): the learners and the clustering."""

    num_learners: int | None = setting(None, "Divide-and-Conquer: K clusters / embedding slices (embedding_dim must "
                                       "be divisible by it).", int, bound=Bound(1, 1024))
    recluster_every: int | None = setting(None, "Divide-and-Conquer: re-cluster every T epochs (0 = cluster once).",
                                          int, bound=Bound(0, note="0 = cluster once"))
    conquer_epochs: int | None = setting(None, "Divide-and-Conquer: final epochs that train the whole embedding on "
                                         "all data.", int, bound=Bound(0))
    cluster_on: str | None = setting(None, "Divide-and-Conquer: cluster the backbone features (the authors) or the "
                                     "embeddings.", str, choices=("features", "embeddings"))


@grouped("config.method")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """The method of a run: its name, its own options, and the general method flags.

    Each general flag (every setting but `name` and `options`: `rerank`, `xbm` and those of the
    `pddm`, `hdml` and `dc` groups) is None unless set: a method uses the flags its spec lists, with
    its own default when unset, and a flag set for a method that does not use it is refused
    (`check_method_config`), never silently dropped. The flat spellings of the previous release
    (`MethodConfig(hdml_alpha=...)`, `config.method.hdml_alpha`) still work, with a DeprecationWarning.
    """

    name: str = setting("margin", "Training method (METHOD_SPECS; a --plugins module may add one).",
                        flag="method")
    options: Mapping[str, Any] | None = setting(
        None, "The method's own options as a JSON object, e.g. '{\"margin\": 0.3}'; `pddm-tf --help_methods` "
        "lists each method's options, their types, defaults and bounds.", kind=dict, flag="loss_options")
    pddm: PDDMConfig = subgroup(PDDMConfig)
    hdml: HDMLConfig = subgroup(HDMLConfig)
    dc: DivideAndConquerConfig = subgroup(DivideAndConquerConfig)
    rerank: int | None = setting(None, "Methods with a PDDM unit: re-rank each query's Euclidean top-R shortlist "
                                 "by the learned PDDM score (0 = plain Euclidean retrieval).", int,
                                 bound=Bound(0, 100_000, note="0 = plain Euclidean retrieval"))
    xbm: int | None = setting(None, "Pair losses: wrap the loss in a cross-batch memory (XBM, Wang et al., CVPR "
                              "2020) of this many past embeddings (0 = off; at least the batch size).", int,
                              bound=Bound(0, 10_000_000, note="0 = off"))


#: General method flag -> its `Setting`: every setting of `MethodConfig` and its groups but name and options.
GENERAL_FLAGS: dict[str, Setting] = {flag: spec for flag, path, spec in settings_of(MethodConfig)
                                     if path not in ("name", "options")}
_FLAG_PATHS: dict[str, str] = {flag: path for flag, path, _ in settings_of(MethodConfig)}


def _method_flag(config: MethodConfig, flag: str) -> Any:
    """The value of the general method flag `flag` (`"hdml_alpha"`) in `config` (`config.hdml.alpha`)."""
    return get(config, _FLAG_PATHS[flag])


def _method_config(name: str, options: Mapping[str, Any] | None = None, **flags: Any) -> MethodConfig:
    """The `MethodConfig` of a method name, its options and general flags by flag name (not checked)."""
    return replace_paths(MethodConfig(name=name, options=options), {_FLAG_PATHS[flag]: value
                                                                    for flag, value in flags.items()})


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """One training method.

    Attributes:
      name: what `--method` and `TrainConfig.method.name` call it (never renamed: users' scripts use it).
      summary: one line for `--help`.
      build: `builder(backbone, embedding_dim, settings) -> EmbeddingModel` (see `Builder`).
      options: the method's own options, name -> `Setting` (`--loss_options`).
      flags: the general method flags it uses (`GENERAL_FLAGS`), name -> the method's default.
      check: a check of the whole run's settings (see `Check`), or None.
    """

    name: str
    summary: str
    build: Builder
    options: Mapping[str, Setting] = dataclasses.field(default_factory=dict)
    flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check: Check | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.flags) - set(GENERAL_FLAGS))
        if unknown:
            raise ValueError(f"method {self.name!r}: {', '.join(unknown)} are not general method flags; they are "
                             f"{', '.join(GENERAL_FLAGS)} (a method's own settings go in `options`)")
        clash = sorted((set(self.options) & set(self.flags)) | (set(self.options) & set(COMMON_SETTINGS)))
        if clash:
            raise ValueError(f"method {self.name!r}: option {', '.join(clash)} is also a flag it uses or a common "
                             "setting; give it another name")
        for flag, default in self.flags.items():
            GENERAL_FLAGS[flag].parse(f"method {self.name!r}'s default {flag}", default)
        for option, spec in self.options.items():
            spec.parse(f"method {self.name!r}'s default {option}", spec.default)

    def parse_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The given `options` checked and typed; `ConfigError` for an unknown key, a wrong type or a value out
        of bounds, naming it and the method's options."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise ConfigError(f"--loss_options: method {self.name} has no option {', '.join(unknown)}; its options "
                              f"are: {known}")
        return {name: self.options[name].parse(f"--loss_options {name}", value) for name, value in options.items()}

    def settings(self, config: MethodConfig, dropout: float = 0.0,
                 training_classes: int | None = None) -> dict[str, Any]:
        """What the builder receives: each option and flag of the method (given, else its default), dropout
        and training_classes. `config` must have passed `check_method_config`."""
        values: dict[str, Any] = {name: copy.deepcopy(spec.default) for name, spec in self.options.items()}
        values.update(self.parse_options(config.options))
        for flag, default in self.flags.items():
            given = _method_flag(config, flag)
            values[flag] = default if given is None else given
        values.update(dropout=dropout, training_classes=training_classes)
        return values

    def accepted(self) -> tuple[str, ...]:
        """The keywords `build_model` takes for this method: its options, its flags and the common settings."""
        return (*self.options, *self.flags, *COMMON_SETTINGS)

    def __call__(self, backbone: Any, embedding_dim: int, *, loss_options: Mapping[str, Any] | None = None,
                 **options: Any) -> Any:
        """The model of this method (`pddm_tf.methods.build_model(self.name, ...)`): `options` are its options,
        flags and common settings by keyword, `loss_options` its options as one mapping."""
        unknown = sorted(set(options) - set(self.accepted()))
        if unknown:
            raise ValueError(f"method {self.name!r} takes no option {', '.join(map(repr, unknown))}; its options "
                             f"are {', '.join(map(repr, sorted(self.accepted())))}")
        flags = {name: options.pop(name) for name in list(options) if name in self.flags}
        common = {name: options.pop(name) for name in list(options) if name in COMMON_SETTINGS}
        config = _method_config(self.name, {**dict(loss_options or {}), **options}, **flags)
        check_method_config(config, self)
        return self.build(backbone, embedding_dim, self.settings(config, **common))


#: method name -> `MethodSpec`: every built-in method (`pddm_tf.methods.catalog` loads them) and every one a
#: plugin registers. No TensorFlow import.
METHOD_SPECS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec | str, builder: Callable[..., Any] | None = None) -> MethodSpec:
    """Adds `spec` to `METHOD_SPECS` and returns it: `--method`, `TrainConfig`, `build_model`, the checks
    and `--help` then know it. A `--plugins` module calls this at import.

    The old form `register_method(name, builder)`, whose builder took `(backbone, embedding_dim, *,
    option=default, ...)`, still works for one release with a DeprecationWarning: its keyword-only
    parameters become options (or the general flags of the same name).
    """
    if isinstance(spec, str):
        if builder is None:
            raise TypeError("register_method takes a MethodSpec")
        warn_deprecated("register_method(name, builder) is deprecated; use register_method(MethodSpec(name=..., "
                        "summary=..., build=..., options=..., flags=...)) (see pddm_tf.methods.spec)", stacklevel=2)
        spec = _legacy_spec(spec, builder)
    return METHOD_SPECS.register(spec.name, spec)


def _legacy_spec(name: str, builder: Callable[..., Any]) -> MethodSpec:
    """A spec for an old-style builder(backbone, embedding_dim, *, option=default, ...)."""
    parameters = [p for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY]
    flags = {p.name: p.default for p in parameters if p.name in GENERAL_FLAGS}
    options = {p.name: Setting(type(p.default) if p.default is not None else (int, float, str, bool), p.default,
                               "(a keyword of the builder)", optional=p.default is None)
               for p in parameters if p.name not in GENERAL_FLAGS and p.name not in (*COMMON_SETTINGS, "num_classes")}
    taken = {p.name for p in parameters}

    def build(backbone: Any, embedding_dim: int, settings: Mapping[str, Any]) -> Any:
        values = settings if "num_classes" in settings else {**settings, "num_classes": settings["training_classes"]}
        return builder(backbone, embedding_dim, **{key: value for key, value in values.items() if key in taken})

    return MethodSpec(name=name, summary=(builder.__doc__ or name).strip().splitlines()[0], build=build,
                      options=options, flags=flags)


def check_method_config(config: MethodConfig, spec: MethodSpec | None = None) -> MethodSpec:
    """The spec of `config.name` once `config` is one it can train: a known method, every general flag set
    is one it uses, every option known, typed and in bounds. Raises `ConfigError` (one line) otherwise."""
    if spec is None:
        if config.name not in METHOD_SPECS:
            raise ConfigError(f"--method={config.name}: unknown method; expected one of {', '.join(METHOD_SPECS)} "
                              "(or one that a --plugins module registers)")
        spec = METHOD_SPECS[config.name]
    for flag, flag_setting in GENERAL_FLAGS.items():
        value = _method_flag(config, flag)
        if value is None:
            continue
        if flag not in spec.flags:
            users = [name for name, other in METHOD_SPECS.items() if flag in other.flags]
            own = (f"; --method={spec.name}'s own {flag} is set with --loss_options='{{\"{flag}\": "
                   f"{json.dumps(value)}}}'" if flag in spec.options else "")
            raise ConfigError(f"--{flag}={_flag_text(value)} is not used by --method={spec.name}; it applies to "
                              f"{', '.join(users) or 'no method'}{own}")
        flag_setting.parse(f"--{flag}", value)
    spec.parse_options(config.options)
    return spec


def _flag_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
