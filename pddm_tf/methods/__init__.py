"""Training methods by name: each builds its model around a backbone, with the data it trains on.

  names.py     `METHOD_NAMES`, the built-in methods' names (no TensorFlow import: `pddm-tf --help`
               lists them)
  builders.py  the `METHODS` registry (`register_method` adds one), `build_model` (strict options,
               `METHOD_OPTIONS`), `method_options` (a method's own options from one full set)
  pipeline.py  `training_pipeline`: the batches and callbacks a method's model trains with
  recipes.py   one named `TrainConfig` per paper setting (`--recipe=pddm_cub`, ...): `get_recipe`

Importing this package does not import TensorFlow: every name but `METHOD_NAMES` is imported when
first used (PEP 562).
"""

from __future__ import annotations

from pddm_tf._lazy import lazy_attributes
from pddm_tf.methods.names import METHOD_NAMES

# Public name -> the module that holds it, imported on first use (builders and pipeline import TensorFlow).
_LAZY: dict[str, str] = {
    "METHODS": "pddm_tf.methods.builders",
    "METHOD_OPTIONS": "pddm_tf.methods.builders",
    "RECIPES": "pddm_tf.methods.recipes",
    "Recipe": "pddm_tf.methods.recipes",
    "build_model": "pddm_tf.methods.builders",
    "get_recipe": "pddm_tf.methods.recipes",
    "loss_hyperparameters": "pddm_tf.methods.builders",
    "method_options": "pddm_tf.methods.builders",
    "recipes_table": "pddm_tf.methods.recipes",
    "register_method": "pddm_tf.methods.builders",
    "training_pipeline": "pddm_tf.methods.pipeline",
}

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "METHOD_OPTIONS",
    "RECIPES",
    "Recipe",
    "build_model",
    "get_recipe",
    "loss_hyperparameters",
    "method_options",
    "recipes_table",
    "register_method",
    "training_pipeline",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
