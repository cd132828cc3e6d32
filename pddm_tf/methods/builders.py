"""Named training methods: one place that turns a method name into a model to `compile` and `fit`.

Used by `pddm-tf train --method=NAME` and by the benchmarks, so every method is built the same
way around the same backbone and embedding size. `register_method` adds a method.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import keras

from pddm_tf import losses
from pddm_tf.layers import PDDM
from pddm_tf.methods.names import METHOD_NAMES
from pddm_tf.miners import DistanceWeightedMiner, QuadrupletMiner
from pddm_tf.models import DivideAndConquerModel, EmbeddingModel, HDMLModel, MetricLossModel, PDDMModel
from pddm_tf.registry import Registry


def _pddm(heads: int, default_mining_score: str) -> Callable[..., EmbeddingModel]:
    def build(backbone: keras.Model, embedding_dim: int, *, alpha: float = 1.0, beta: float = 0.5,
              embedding_weight: float = 0.5, mining: str = "per_pair", mining_score: str | None = None,
              pddm_normalize_inputs: bool = False, dropout: float = 0.0) -> EmbeddingModel:
        loss = losses.DoubleHeaderHingeLoss(alpha=alpha, beta=beta, embedding_weight=embedding_weight,
                                            heads=heads, miner=QuadrupletMiner(mining))
        pddm = PDDM(normalize_inputs=pddm_normalize_inputs, name="pddm")
        return PDDMModel(backbone, embedding_dim=embedding_dim, pddm=pddm, loss=loss,
                         mining_score=mining_score or default_mining_score, dropout=dropout)

    return build


#: Constructor arguments of every Keras loss, not hyperparameters of the method.
_KERAS_LOSS_ARGUMENTS = frozenset({"self", "name", "reduction", "dtype"})


def loss_hyperparameters(loss_class: type[keras.losses.Loss]) -> tuple[str, ...]:
    """The hyperparameters of a loss class: its constructor's named arguments but Keras' own."""
    return tuple(p.name for p in inspect.signature(loss_class.__init__).parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _KERAS_LOSS_ARGUMENTS)


#: Annotation of a loss hyperparameter -> the JSON values it accepts (bool is not a number here).
_OPTION_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,),
                                              "dict[str, Any]": (dict,)}


def _check_option_types(loss_class: type[keras.losses.Loss], options: dict[str, Any]) -> None:
    """Raises ValueError naming the option whose value's type its constructor's annotation does not take."""
    parameters = inspect.signature(loss_class.__init__).parameters
    for name, value in options.items():
        annotation = parameters[name].annotation
        accepted = [_OPTION_TYPES[part.strip()] for part in str(annotation).split("|") if part.strip() in _OPTION_TYPES]
        if not accepted:
            continue  # unannotated or an unusual type: the constructor checks it
        ok = any(isinstance(value, types) for types in accepted)
        if isinstance(value, bool) and (bool,) not in accepted:
            ok = False
        if not ok:
            raise ValueError(f"{loss_class.__name__}'s option {name} takes a value of type {annotation}, "
                             f"got {value!r}")


def _baseline(loss_class: type[keras.losses.Loss], fixed: dict[str, Any] | None = None,
              **defaults: Any) -> Callable[..., EmbeddingModel]:
    """A builder of `MetricLossModel(loss_class(...))`: `fixed` arguments define the method (e.g. the
    triplet mining of "triplet_batchhard") and cannot be overridden; `defaults` can, by `loss_options`."""
    fixed = dict(fixed or {})
    settable = tuple(name for name in loss_hyperparameters(loss_class) if name not in fixed)

    def build(backbone: keras.Model, embedding_dim: int, *, loss_options: dict[str, Any] | None = None,
              dropout: float = 0.0) -> EmbeddingModel:
        options = dict(loss_options or {})
        unknown = set(options) - set(settable)
        if unknown:
            raise ValueError(f"{loss_class.__name__} takes no loss option {_names(unknown)}; its options are "
                             f"{_names(settable)}")
        _check_option_types(loss_class, options)
        return MetricLossModel(backbone, loss_class(**{**defaults, **options, **fixed}), embedding_dim=embedding_dim,
                               dropout=dropout)

    return build


def _hdml(base: str) -> Callable[..., EmbeddingModel]:
    def check(num_classes: int | None) -> int:
        if num_classes is None:
            raise ValueError(f"method hdml_{base} needs num_classes (the number of training classes)")
        return num_classes

    def build(backbone: keras.Model, embedding_dim: int, *, num_classes: int | None = None,
              hdml_alpha: float | None = None, hdml_beta: float = 1e4, hdml_generator_input: str = "single",
              hdml_synthetic: bool = True, dropout: float = 0.0) -> EmbeddingModel:
        return HDMLModel(backbone, embedding_dim, num_classes=check(num_classes), base=base, alpha=hdml_alpha,
                         beta=hdml_beta, generator_input=hdml_generator_input, synthetic=hdml_synthetic,
                         dropout=dropout)

    def build_pddm(backbone: keras.Model, embedding_dim: int, *, num_classes: int | None = None,
                   alpha: float = 1.0, beta: float = 0.5, embedding_weight: float = 0.5,
                   hdml_alpha: float | None = None, hdml_beta: float = 1e4, hdml_generator_input: str = "single",
                   hdml_synthetic: bool = True, dropout: float = 0.0) -> EmbeddingModel:
        # alpha/beta stay the PDDM margins, as for the other methods; HDML's own are hdml_alpha/hdml_beta.
        pddm_loss = losses.DoubleHeaderHingeLoss(alpha=alpha, beta=beta, embedding_weight=embedding_weight)
        return HDMLModel(backbone, embedding_dim, num_classes=check(num_classes), base=base, alpha=hdml_alpha,
                         beta=hdml_beta, generator_input=hdml_generator_input, synthetic=hdml_synthetic,
                         pddm_loss=pddm_loss, dropout=dropout)

    return build_pddm if base == "pddm" else build


def _divide_and_conquer(base: str) -> Callable[..., EmbeddingModel]:
    def build_margin(backbone: keras.Model, embedding_dim: int, *, num_learners: int = 4,
                     dropout: float = 0.0) -> EmbeddingModel:
        # The authors' setting: margin 0.2 around a fixed boundary beta = 1.2 (METHODS.md section 4)
        # and their released sampler, each anchor's closest negatives beyond 0.5 (section 7). It is
        # deterministic, so a resumed run draws the same triplets.
        loss = losses.MarginLoss(learn_beta=False, miner="closest_beyond_cutoff")
        return DivideAndConquerModel(backbone, embedding_dim=embedding_dim, num_learners=num_learners, loss=loss,
                                     dropout=dropout)

    def build_pddm(backbone: keras.Model, embedding_dim: int, *, num_learners: int = 4, alpha: float = 1.0,
                   beta: float = 0.5, embedding_weight: float = 0.5, mining: str = "per_pair",
                   mining_score: str | None = None, dropout: float = 0.0) -> EmbeddingModel:
        loss = losses.DoubleHeaderHingeLoss(alpha=alpha, beta=beta, embedding_weight=embedding_weight,
                                            miner=QuadrupletMiner(mining))
        return DivideAndConquerModel(backbone, embedding_dim=embedding_dim, num_learners=num_learners, loss=loss,
                                     mining_score=mining_score or "pddm", dropout=dropout)

    return build_margin if base == "margin" else build_pddm


#: method name -> builder(backbone, embedding_dim, **options) -> model; each builder takes only its
#: options, as keyword-only arguments. `register_method` adds one.
METHODS: Registry[Callable[..., EmbeddingModel]] = Registry("method")


def register_method(name: str, builder: Callable[..., EmbeddingModel]) -> Callable[..., EmbeddingModel]:
    """Makes `builder(backbone, embedding_dim, *, option=..., ...) -> EmbeddingModel` the method `name`
    of `build_model` (and of `pddm_tf.training.train(TrainConfig(method=name, ...))`); its keyword-only
    parameters are its options. Returns `builder`. On the command line, a module that registers
    methods is named with --plugins: `pddm-tf train --plugins=my_module --method=name`."""
    return METHODS.register(name, builder)


for _name, _builder in {
    "pddm_quadruplet": _pddm(heads=2, default_mining_score="pddm"),
    "pddm_triplet": _pddm(heads=1, default_mining_score="pddm"),
    "euclidean_quadruplet": _pddm(heads=2, default_mining_score="euclidean"),
    "contrastive": _baseline(losses.ContrastiveLoss),
    "triplet_semihard": _baseline(losses.TripletLoss, fixed={"miner": "semi_hard"}),
    "triplet_batchhard": _baseline(losses.TripletLoss, fixed={"miner": "batch_hard"}),
    "lifted_structured": _baseline(losses.LiftedStructuredLoss),
    "npair": _baseline(losses.NPairLoss),
    # Seeded (see dc_margin), and given by name so that every model gets its own sampler: one shared
    # instance would let training one model move the draws of every other built in the process.
    "margin": _baseline(losses.MarginLoss, miner={"name": DistanceWeightedMiner.name, "config": {"seed": 0}}),
    "multi_similarity": _baseline(losses.MultiSimilarityLoss),
    "hdml_npair": _hdml("npair"),
    "hdml_triplet": _hdml("triplet"),
    "hdml_pddm": _hdml("pddm"),
    "dc_margin": _divide_and_conquer("margin"),
    "dc_pddm": _divide_and_conquer("pddm"),
}.items():
    register_method(_name, _builder)
# The command line lists METHOD_NAMES without importing this module (and TensorFlow): keep them equal.
if tuple(METHODS) != METHOD_NAMES:
    raise ImportError("pddm_tf.methods.names.METHOD_NAMES is out of date: it must list the built-in methods")


class _MethodOptions(Mapping[str, tuple[str, ...]]):
    """method name -> the options its builder takes (the keyword-only parameters after backbone,
    embedding_dim), read from the registered builders, so a method registered later is included."""

    def __getitem__(self, method: str) -> tuple[str, ...]:
        parameters = inspect.signature(METHODS[method]).parameters.values()
        return tuple(p.name for p in parameters if p.kind is p.KEYWORD_ONLY)

    def __iter__(self) -> Iterator[str]:
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)


METHOD_OPTIONS: Mapping[str, tuple[str, ...]] = _MethodOptions()


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in sorted(names))


def build_model(method: str, backbone: keras.Model, embedding_dim: int = 64, **options: Any) -> EmbeddingModel:
    """The model of a named method around `backbone`, not yet compiled.

    Options are strict: each method takes only the options it uses (`METHOD_OPTIONS[method]`), and
    any other raises a ValueError naming it, so a misspelt or misplaced option is never ignored. To
    configure whichever method from one full set of settings (as the CLI and the benchmarks do),
    pass `**method_options(method, **settings)`, which keeps the settings the method takes.

    Args:
      method: a key of `METHODS`: "pddm_quadruplet", "pddm_triplet" (PDDM with one negative head),
        "euclidean_quadruplet" (the ablation: quadruplets mined by Euclidean distance), or a
        baseline loss ("contrastive", "triplet_semihard", "triplet_batchhard", "lifted_structured",
        "npair", "margin", "multi_similarity"), or HDML around a base loss ("hdml_npair",
        "hdml_triplet", "hdml_pddm"), or Divide-and-Conquer around the margin loss ("dc_margin": fixed
        beta and the authors' closest-beyond-cutoff negatives, as their code) or the PDDM
        quadruplet loss ("dc_pddm", PDDM hard-quadruplet mining on each slice). The plain "margin"
        method samples negatives by distance weighting (the margin-loss paper's sampler).
      backbone: images -> features.
      embedding_dim: d.
      options: dropout (before the embedding projection; every method). The PDDM methods
        (pddm_*, euclidean_quadruplet) take alpha, beta, embedding_weight, mining, mining_score and
        pddm_normalize_inputs (see `layers.PDDM`). HDML methods require num_classes (training
        classes) and take hdml_alpha and hdml_beta (its hardness and weighting temperatures;
        hdml_alpha None = calibrated, see `HDMLModel`), hdml_generator_input ("single" or
        "anchor_pair") and hdml_synthetic (False: the base loss alone, HDML's "without" twin);
        hdml_pddm also takes alpha, beta and embedding_weight for its double-header
        loss. The baseline-loss methods take loss_options, a dict of their loss's constructor
        arguments (`loss_hyperparameters`; e.g. {"margin": 0.3} for the triplet losses) except those
        that define the method (the triplet mining). The Divide-and-Conquer methods take
        num_learners (K, default 4); dc_pddm also alpha, beta, embedding_weight, mining and
        mining_score; train them on the data and with the callback of `training_pipeline`.

    Raises:
      ValueError: an unknown method, or an option the method does not take.
    """
    _check_method(method)
    unknown = set(options) - set(METHOD_OPTIONS[method])
    if unknown:
        raise ValueError(f"method {method!r} takes no option {_names(unknown)}; its options are "
                         f"{_names(METHOD_OPTIONS[method])} (to pass settings shared by all methods, use "
                         "build_model(method, ..., **method_options(method, **settings)))")
    return METHODS[method](backbone, embedding_dim, **options)


def method_options(method: str, **settings: Any) -> dict[str, Any]:
    """The `settings` that `method` takes: what to pass to `build_model` when one full set of settings
    (e.g. the CLI's flags) configures any method. Settings only other methods take are dropped; a
    name that no method takes (a misspelling) raises.

    Raises:
      ValueError: an unknown method, or a setting no method takes.
    """
    _check_method(method)
    known = set().union(*METHOD_OPTIONS.values())
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"no method takes the option {_names(unknown)}; {method!r} takes "
                         f"{_names(METHOD_OPTIONS[method])}, and the methods' options are {_names(known)}")
    return {name: value for name, value in settings.items() if name in METHOD_OPTIONS[method]}
