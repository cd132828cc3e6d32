"""Training methods by name: each is one `MethodSpec` in one file, found in one table.

  spec.py      `MethodSpec` (name, builder, typed options, the general flags it uses),
               `MethodConfig` (a run's method settings; its groups `PDDMConfig`, `HDMLConfig`,
               `DivideAndConquerConfig`), `register_method`, `METHOD_SPECS`
  catalog.py   loads the built-in methods, `library/<name>.py`, into `METHOD_SPECS`;
               `METHOD_NAMES`, `methods_help`
  library/     one module per built-in method (and `_shared.py`, what several share)
  builders.py  `build_model(method, backbone, embedding_dim, **options)`, `method_options`
  pipeline.py  `training_pipeline`: the batches and callbacks a method's model trains with
  recipes.py   one named `TrainConfig` per paper setting (`--recipe=pddm_cub`, ...): `get_recipe`

Importing this package imports no TensorFlow, and neither do the specs: a builder imports it when
a model is first built. The names below are imported when first used (PEP 562).
"""

from __future__ import annotations

from pddm_tf._lazy import lazy_attributes

# Public name -> the module that holds it, imported on first use (pipeline imports TensorFlow).
_LAZY: dict[str, str] = {
    "DivideAndConquerConfig": "pddm_tf.methods.spec",
    "HDMLConfig": "pddm_tf.methods.spec",
    "METHODS": "pddm_tf.methods.builders",
    "METHOD_NAMES": "pddm_tf.methods.catalog",
    "METHOD_OPTIONS": "pddm_tf.methods.builders",
    "METHOD_SPECS": "pddm_tf.methods.catalog",
    "MethodConfig": "pddm_tf.methods.spec",
    "MethodSpec": "pddm_tf.methods.spec",
    "PDDMConfig": "pddm_tf.methods.spec",
    "RECIPES": "pddm_tf.methods.recipes",
    "Recipe": "pddm_tf.methods.recipes",
    "build_model": "pddm_tf.methods.builders",
    "get_recipe": "pddm_tf.methods.recipes",
    "get_spec": "pddm_tf.methods.catalog",
    "loss_hyperparameters": "pddm_tf.methods.builders",
    "method_options": "pddm_tf.methods.builders",
    "recipes_table": "pddm_tf.methods.recipes",
    "register_method": "pddm_tf.methods.builders",
    "training_pipeline": "pddm_tf.methods.pipeline",
}

__all__ = [
    "DivideAndConquerConfig",
    "HDMLConfig",
    "METHODS",
    "METHOD_NAMES",
    "METHOD_OPTIONS",
    "METHOD_SPECS",
    "MethodConfig",
    "MethodSpec",
    "PDDMConfig",
    "RECIPES",
    "Recipe",
    "build_model",
    "get_recipe",
    "get_spec",
    "loss_hyperparameters",
    "method_options",
    "recipes_table",
    "register_method",
    "training_pipeline",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
