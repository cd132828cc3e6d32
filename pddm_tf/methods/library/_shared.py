"""What several built-in methods share: their general flags' defaults, common options and builders.

The builders reach the library's Keras classes through `pddm_tf`'s lazy public names, so this
module imports no TensorFlow (see `pddm_tf.methods.spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pddm_tf
from pddm_tf.options import Bound, ConfigError, Setting

#: The flags of the methods with a PDDM unit and the double-header loss, with their defaults.
PDDM_FLAGS: dict[str, Any] = {"mining": "per_pair", "mining_score": "pddm", "pddm_normalize_inputs": False,
                              "alpha": 1.0, "beta": 0.5, "embedding_weight": 0.5, "rerank": 0}
#: HDML's flags (hdml_alpha None: calibrated, see HDMLModel).
HDML_FLAGS: dict[str, Any] = {"hdml_alpha": None, "hdml_beta": 1e4, "hdml_generator_input": "single",
                              "hdml_synthetic": True}
#: Divide-and-Conquer's flags.
DC_FLAGS: dict[str, Any] = {"num_learners": 4, "recluster_every": 2, "conquer_epochs": 1, "cluster_on": "features"}

#: The distances a loss option `distance` takes (`pddm_tf.distances.DISTANCES`).
DISTANCE = Setting(str, "euclidean", "the distance between embeddings", choices=("euclidean", "squared_euclidean",
                                                                                   "cosine"))
#: A loss's optional miner: a registered miner's name or {"name": ..., "config": {...}} (None: the loss's own).
MINER = Setting((str, dict), None, "the miner: a name of pddm_tf.miners.MINERS or {\"name\": ..., \"config\": {...}}",
                optional=True)


def options_of(settings: Mapping[str, Any], options: Mapping[str, Setting]) -> dict[str, Any]:
    """The values of `options` in a builder's `settings`, without the None of an unset optional one."""
    return {name: settings[name] for name in options if settings[name] is not None or not options[name].optional}


def loss_model(backbone: Any, embedding_dim: int, loss: Any, settings: Mapping[str, Any]) -> Any:
    """`MetricLossModel(backbone, loss)`: a baseline method's model."""
    return pddm_tf.MetricLossModel(backbone, loss, embedding_dim=embedding_dim, dropout=settings["dropout"])


#: The flag of the pair losses that a cross-batch memory can wrap (`pair_loss_model`), off by default.
XBM_FLAGS: dict[str, Any] = {"xbm": 0}


def check_xbm(values: Mapping[str, Any]) -> None:
    """A cross-batch memory holds at least one global batch (P x K images), or it could not take the batch."""
    batch = values["batch_classes"] * values["batch_per_class"]
    if values.get("xbm") and values["xbm"] < batch:
        raise ConfigError(f"--xbm={values['xbm']} is smaller than a batch ({values['batch_classes']} x "
                          f"{values['batch_per_class']} = {batch} images): the memory must hold at least one batch")


def pair_loss_model(backbone: Any, embedding_dim: int, loss: Any, settings: Mapping[str, Any]) -> Any:
    """`loss_model` of a pair loss, wrapped in a `CrossBatchMemory` of `settings["xbm"]` rows when it is > 0."""
    if settings["xbm"]:
        loss = pddm_tf.CrossBatchMemory(loss, embedding_size=embedding_dim, memory_size=settings["xbm"])
    return loss_model(backbone, embedding_dim, loss, settings)


def double_header_loss(settings: Mapping[str, Any], heads: int = 2, mining: bool = True) -> Any:
    """The double-header hinge loss of the PDDM flags in `settings`."""
    extra = {"miner": pddm_tf.QuadrupletMiner(settings["mining"])} if mining else {}
    return pddm_tf.DoubleHeaderHingeLoss(alpha=settings["alpha"], beta=settings["beta"],
                                         embedding_weight=settings["embedding_weight"], heads=heads, **extra)


def pddm_model(backbone: Any, embedding_dim: int, settings: Mapping[str, Any], heads: int) -> Any:
    """A `PDDMModel` of the PDDM flags in `settings`."""
    pddm = pddm_tf.PDDM(normalize_inputs=settings["pddm_normalize_inputs"], name="pddm")
    return pddm_tf.PDDMModel(backbone, embedding_dim=embedding_dim, pddm=pddm,
                             loss=double_header_loss(settings, heads), mining_score=settings["mining_score"],
                             dropout=settings["dropout"])


def hdml_model(backbone: Any, embedding_dim: int, settings: Mapping[str, Any], base: str, **extra: Any) -> Any:
    """An `HDMLModel` around `base` of the HDML flags in `settings`."""
    if settings["training_classes"] is None:
        raise ValueError(f"method hdml_{base} needs the number of training classes")
    hardness = pddm_tf.HardnessSchedule(alpha=settings["hdml_alpha"], beta=settings["hdml_beta"])
    synthesis = pddm_tf.SynthesisConfig(generator_input=settings["hdml_generator_input"])
    return pddm_tf.HDMLModel(backbone, embedding_dim, num_classes=settings["training_classes"], base=base,
                             hardness=hardness, synthesis=synthesis,
                             synthetic=settings["hdml_synthetic"], dropout=settings["dropout"], **extra)


def check_divide_and_conquer(values: Mapping[str, Any]) -> None:
    """Divide-and-Conquer's limits: equal embedding slices, and no weight average (per-learner optimisers)."""
    if values["embedding_dim"] % values["num_learners"]:
        raise ConfigError(f"--embedding_dim={values['embedding_dim']} is not divisible by --num_learners="
                          f"{values['num_learners']}: Divide-and-Conquer cuts the embedding into equal slices")
    if values.get("ema_momentum", 0) > 0:
        # Each learner has its own optimiser copy (per-learner Adam state); one weight average over
        # optimisers that update different variables at different steps is not supported.
        raise ConfigError(f"--ema_momentum is not supported with --method={values['method']} (per-learner "
                          "optimisers); use --ema_momentum=0")


__all__ = ["Bound", "DC_FLAGS", "DISTANCE", "HDML_FLAGS", "MINER", "PDDM_FLAGS", "XBM_FLAGS", "check_xbm",
           "check_divide_and_conquer", "double_header_loss", "hdml_model", "loss_model", "options_of",
           "pair_loss_model", "pddm_model"]
