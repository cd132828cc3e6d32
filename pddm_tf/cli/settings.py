"""The flags of `pddm-tf`, made from `TrainConfig`'s fields, and the config they give.

One flag per field of every `TrainConfig` group, with the field's type, default, choices and help
(`pddm_tf.options.Setting`), so the command line and Python share one source; numeric bounds are
checked by `TrainConfig.check` (one line naming the bound), not by absl. The general method flags
default to None: the chosen method's default (`pddm-tf --help_methods`). No TensorFlow import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absl import flags

from pddm_tf.methods.catalog import METHOD_NAMES, METHOD_SPECS, methods_help
from pddm_tf.methods.recipes import get_recipe
from pddm_tf.methods.spec import GENERAL_FLAGS
from pddm_tf.options import ConfigError, Setting
from pddm_tf.training import config as config_module
from pddm_tf.training.config import TrainConfig

FLAGS = flags.FLAGS

#: Flags absl.logging already defines, reused (their help is rewritten below).
_ABSL_FLAGS = ("log_dir",)


def _define(name: str, spec: Setting) -> None:
    help_text = spec.help
    if name in GENERAL_FLAGS:
        help_text += " Default: the method's (--help_methods)."
    if name == "method":
        help_text = (f"Training method: one of {', '.join(METHOD_NAMES)}, or a method that a --plugins module "
                     "registers; --help_methods describes each, with its flags and options.")
    kinds = spec.kinds
    if bool in kinds:
        flags.DEFINE_bool(name, spec.default, help_text)
    elif tuple in kinds:
        flags.DEFINE_list(name, list(spec.default) if spec.default is not None else None, help_text)
    elif dict in kinds:
        flags.DEFINE_string(name, None, help_text)
    elif spec.choices:
        flags.DEFINE_enum(name, spec.default, list(spec.choices), help_text)
    elif float in kinds:
        flags.DEFINE_float(name, spec.default, help_text)
    elif int in kinds:
        flags.DEFINE_integer(name, spec.default, help_text)
    else:
        flags.DEFINE_string(name, spec.default, help_text)


for _name, (_group, _field, _spec) in config_module.FLAGS.items():
    if _name in _ABSL_FLAGS:
        FLAGS[_name].help = f"{_spec.help} (absl's own flag, reused.)"
        flags.declare_key_flag(_name)
    else:
        _define(_name, _spec)

flags.DEFINE_string("recipe", None, "A paper setting from pddm_tf.methods.recipes (e.g. pddm_cub, hdml_sop, "
                    "dc_cars): sets the flags below; flags given on the command line win.")
flags.DEFINE_list("plugins", [], "Python modules to import before the command runs (importable names, e.g. "
                  "my_project.metric_learning): a module can register a method "
                  "(pddm_tf.methods.register_method), a dataset (pddm_tf.data.DATASETS.register), a search backend "
                  "(pddm_tf.evaluation.SEARCH_BACKENDS.register) or a miner (a pddm_tf.miners.Miner subclass), "
                  "whose names --method, --dataset and --loss_options then accept.")
flags.DEFINE_bool("help_methods", False, "Print every training method with its flags and --loss_options (types, "
                  "defaults, bounds), and exit.")
flags.DEFINE_bool("onednn", False, "Use oneDNN's CPU kernels (TF_ENABLE_ONEDNN_OPTS=1). Off by default because on "
                  "CPUs without AVX-512 TensorFlow then logs an ERROR line about a uint8 fallback at run time. "
                  "Without the flag on the command line, a TF_ENABLE_ONEDNN_OPTS already in the environment wins.")
flags.DEFINE_bool("verbose", False, "Show the traceback of an error (e.g. of a --plugins module) after its one line.")
FLAGS["verbosity"].help = ("Logging verbosity: -1 warnings, 0 (default) also pddm_tf's info, 1 debug and every "
                           "TensorFlow log (otherwise TensorFlow shows warnings and errors only, its C++ code "
                           "errors only unless TF_CPP_MIN_LOG_LEVEL is set).")
flags.declare_key_flag("verbosity")


def flag_values() -> dict[str, Any]:
    """Every flag's value (what the commands' checks read)."""
    return {name: FLAGS[name].value for name in FLAGS}


def apply_recipe(announce: bool = True) -> None:
    """Sets the recipe's flag values, except those given on the command line and the method flags that the
    chosen method does not use (a recipe's PDDM margins do not apply to --method=npair). Idempotent."""
    if not FLAGS.recipe:
        return
    try:
        recipe = get_recipe(FLAGS.recipe)
    except ValueError as error:
        raise ConfigError(f"--recipe={FLAGS.recipe}: {error}") from None
    method = FLAGS.method if FLAGS["method"].present else recipe.flags.get("method", FLAGS.method)
    used = METHOD_SPECS[method].flags if method in METHOD_SPECS else {}
    for name, value in recipe.flags.items():
        if not FLAGS[name].present and (name not in GENERAL_FLAGS or name in used):
            FLAGS[name].value = list(value) if isinstance(value, tuple) else value
    if announce:
        print(f"recipe {recipe.name}: {recipe.paper}")


def train_config(values: Mapping[str, Any] | None = None) -> TrainConfig:
    """The `TrainConfig` of the flags (after the recipe's values are applied), or of `values` (flag name ->
    value), parsed once. --log_dir counts only when given (absl's default may come from TEST_TMPDIR)."""
    if values is None:
        values = flag_values()
        log_dir = FLAGS.log_dir if FLAGS["log_dir"].present and FLAGS.log_dir else None
    else:
        log_dir = values.get("log_dir") if values.get("log_dir") != FLAGS["log_dir"].default else None
    chosen = {name: values[name] for name in config_module.FLAGS if name != "log_dir" and name in values}
    return TrainConfig.from_flags(chosen, log_dir=log_dir)


def print_methods() -> None:
    print(methods_help())
