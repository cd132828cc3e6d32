"""Checks of `pddm-tf` flag values, made before any work starts.

Every refused value gets one line that names the flag and what it allows; `pddm-tf` prints it and
exits with code 2 (a usage error) before anything is loaded, trained or written. Checked here:

* every numeric flag against its range (`BOUNDS`), floats also for NaN and infinity;
* settings that cannot give a single positive pair or valid tuple (fewer than 2 images per class
  or 2 classes per batch);
* incompatible combinations (`--rerank` without a PDDM unit, `--search_rerank` without a gallery,
  a Divide-and-Conquer embedding that does not split into `num_learners` slices, ...);
* every path: inputs exist ("no such path"), and outputs can be written (no file where a folder is
  expected or the reverse, no folder that cannot be written in).

Pure Python with no TensorFlow import, so a refused command returns at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
from collections.abc import Collection, Mapping
from typing import Any, NoReturn

from pddm_tf.methods.names import METHOD_NAMES

#: The methods whose model has a PDDM unit, i.e. that `--rerank` can re-rank with (tested against
#: `pddm_tf.methods.METHODS`: the models they build have a `pddm` layer).
PDDM_METHODS = frozenset({"pddm_quadruplet", "pddm_triplet", "euclidean_quadruplet", "hdml_pddm", "dc_pddm"})
#: The Divide-and-Conquer methods (their embedding is cut into `num_learners` slices).
DC_METHODS = frozenset({"dc_margin", "dc_pddm"})
#: The methods around one baseline loss, which take --loss_options (tested against
#: `pddm_tf.methods.METHOD_OPTIONS`).
LOSS_OPTION_METHODS = frozenset({"contrastive", "triplet_semihard", "triplet_batchhard", "lifted_structured", "npair",
                                 "margin", "multi_similarity"})


#: The exit code of a usage error: a flag refused before any work started.
EXIT_USAGE = 2


class FlagError(ValueError):
    """A flag value or combination `pddm-tf` refuses; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Bound:
    """The allowed values of a numeric flag: low <= value (< low if low_open), value <= high (< high if
    high_open), or one of `choices`.

    None for `low` or `high` leaves that side open; `note` says what the edge values mean.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""
    choices: tuple[float, ...] = ()

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.choices:
            return " or ".join(_number(choice) for choice in self.choices)
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        text = " and ".join(parts) if parts else "a finite number"
        return f"{text} ({self.note})" if self.note else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


#: flag name -> its range. Every integer and float flag of `pddm_tf.cli` has an entry (a test checks).
BOUNDS: dict[str, Bound] = {
    "test_fraction": Bound(0, 1, high_open=True, note="0 = train on every class"),
    "seed": Bound(0, 2**32 - 1),
    "image_size": Bound(1),
    "channels": Bound(choices=(1, 3)),
    "eval_batch_size": Bound(1),
    "rerank": Bound(0, note="0 = plain Euclidean retrieval"),
    "embedding_dim": Bound(1),
    "dropout": Bound(0, 1, high_open=True),
    "backbone_width": Bound(1),
    "epochs": Bound(0, note="0 = evaluate and export the untrained model"),
    "steps_per_epoch": Bound(0, note="0 = one pass over the training images"),
    "batch_classes": Bound(2, note="a batch needs two classes for a negative"),
    "batch_per_class": Bound(2, note="a class needs two images in a batch for a positive pair"),
    "num_episodes": Bound(1),
    "learning_rate": Bound(0, low_open=True),
    "weight_decay": Bound(0, note="0 = plain Adam"),
    "warmup_fraction": Bound(0, 1, high_open=True, note="0 = no warm-up"),
    "ema_momentum": Bound(0, 1, high_open=True, note="0 = no weight average"),
    "alpha": Bound(0),
    "beta": Bound(0),
    "embedding_weight": Bound(0),
    "hdml_alpha": Bound(0, low_open=True),
    "hdml_beta": Bound(0, low_open=True),
    "num_learners": Bound(1),
    "recluster_every": Bound(0, note="0 = cluster once"),
    "conquer_epochs": Bound(0),
    "eval_every": Bound(0, note="0 = off"),
    "task_index": Bound(0),
    "search_k": Bound(1),
    "search_rerank": Bound(0, note="0 = off"),
    "max_image_pixels": Bound(1),
}


def known_methods() -> tuple[str, ...]:
    """The names --method (and `TrainConfig.method`) accept: the built-in methods and any registered
    since. A method is registered through `pddm_tf.methods.builders`, so until that module is imported
    the built-in names are all there are, and TensorFlow stays unimported."""
    builders = sys.modules.get("pddm_tf.methods.builders")
    return METHOD_NAMES if builders is None else tuple(builders.METHODS)


def check_flags(command: str, values: Mapping[str, Any], methods: Collection[str] | None = None) -> None:
    """Raises `FlagError` naming the first refused flag value of `pddm-tf <command>`.

    Args:
      command: "train", "evaluate" or "export".
      values: flag name -> value (every flag of `pddm_tf.cli`; absent names are taken as unset).
      methods: the names --method accepts; default `known_methods()`.
    """
    methods = known_methods() if methods is None else methods
    if command == "train" and values.get("method") not in methods:
        raise FlagError(f"--method={values.get('method')}: unknown method; expected one of {', '.join(methods)} "
                        "(or one that a --plugins module registers)")
    for name, bound in BOUNDS.items():
        value = values.get(name)
        if value is None or isinstance(value, bool):
            continue
        if not bound.allows(value):
            raise FlagError(f"--{name}={value} is out of range: allowed {bound.describe()}")
    {"train": _check_train, "evaluate": _check_evaluate, "export": _check_export}[command](values)


def _check_train(values: Mapping[str, Any]) -> None:
    method = values.get("method")
    if values.get("rerank", 0) > 0 and method not in PDDM_METHODS:
        raise FlagError(f"--rerank={values['rerank']} re-ranks by a learned PDDM score, but --method={method} has no "
                        f"PDDM unit; use one of {', '.join(sorted(PDDM_METHODS))}, or --rerank=0")
    if method in DC_METHODS and values.get("embedding_dim", 1) % values.get("num_learners", 1):
        raise FlagError(f"--embedding_dim={values['embedding_dim']} is not divisible by --num_learners="
                        f"{values['num_learners']}: Divide-and-Conquer cuts the embedding into equal slices")
    if values.get("weight_decay_mode", "decoupled") not in ("decoupled", "l2"):
        raise FlagError(f"--weight_decay_mode={values['weight_decay_mode']}: expected decoupled or l2")
    if values.get("augment") and values.get("affine"):
        raise FlagError("--augment and --affine are two different training augmentations; choose one")
    if method in DC_METHODS and values.get("ema_momentum", 0) > 0:
        # Each learner has its own optimiser copy (per-learner Adam state); one weight average over
        # optimisers that update different variables at different steps is not supported.
        raise FlagError(f"--ema_momentum is not supported with --method={method} (per-learner optimisers); "
                        "use --ema_momentum=0")
    if values.get("loss_options") is not None:
        parse_loss_options(values["loss_options"])
        if method not in LOSS_OPTION_METHODS:
            raise FlagError(f"--loss_options sets a baseline loss's hyperparameters, but --method={method} has none; "
                            f"use it with one of {', '.join(sorted(LOSS_OPTION_METHODS))}")
    _check_cluster(values)
    _check_dataset(values.get("dataset"), "dataset")
    _check_output_dir(values, "export_dir")
    _check_output_dir(values, "log_dir")
    _check_output_file(values, "json")
    _check_output_file(values, "save_model", suffix=".keras")
    if values.get("backup", True) and values.get("epochs", 0) > 0:
        if values.get("strategy") == "multi_worker" and not values.get("backup_dir"):
            raise FlagError("--strategy=multi_worker needs --backup_dir on storage every worker sees (or --nobackup)")
        _check_output_dir(values, "backup_dir")


def _check_evaluate(values: Mapping[str, Any]) -> None:
    if not values.get("model_dir"):
        raise FlagError("evaluate needs --model_dir (a SavedModel version folder, or its base folder)")
    _check_input(values, "model_dir")
    _check_dataset(values.get("dataset"), "dataset")
    _check_output_file(values, "json")
    _check_output_dir(values, "plots")


def _check_export(values: Mapping[str, Any]) -> None:
    if not values.get("keras_model") or not values.get("export_dir"):
        raise FlagError("export needs --keras_model (a .keras file, e.g. from train --save_model) and "
                        "--export_dir (the TF Serving base folder)")
    _check_input(values, "keras_model", kind="file")
    if values.get("search_rerank", 0) > 0 and not values.get("gallery"):
        raise FlagError(f"--search_rerank={values['search_rerank']} re-ranks the results of `search`, which needs "
                        "--gallery")
    _check_dataset(values.get("gallery"), "gallery")
    _check_output_dir(values, "export_dir")
    _check_output_file(values, "json")


def _check_cluster(values: Mapping[str, Any]) -> None:
    hosts = values.get("worker_hosts")
    if not hosts:
        return
    if values.get("strategy") != "multi_worker":
        raise FlagError(f"--worker_hosts is for --strategy=multi_worker, not --strategy={values.get('strategy')}")
    if values.get("task_index", 0) >= len(hosts):
        raise FlagError(f"--task_index={values['task_index']} is out of range: allowed 0 to {len(hosts) - 1} for "
                        f"{len(hosts)} --worker_hosts")


def _check_dataset(spec: str | None, name: str) -> None:
    """A `folder:PATH` dataset or gallery must be an existing folder."""
    if spec and spec.startswith("folder:"):
        path = pathlib.Path(spec[len("folder:"):])
        if not path.exists():
            raise FlagError(f"--{name}={spec}: no such path {str(path)!r}")
        if not path.is_dir():
            raise FlagError(f"--{name}={spec}: {str(path)!r} is a file; a folder of class folders is expected")


def _check_input(values: Mapping[str, Any], name: str, kind: str = "any") -> None:
    path = pathlib.Path(values[name])
    if not path.exists():
        raise FlagError(f"--{name}={values[name]}: no such path")
    if kind == "file" and path.is_dir():
        raise FlagError(f"--{name}={values[name]} is a folder; a file is expected")


def _check_output_dir(values: Mapping[str, Any], name: str) -> None:
    """A folder output: an existing folder we can write in, or a path whose folders we can create."""
    if not values.get(name):
        return
    path = pathlib.Path(values[name])
    if path.exists():
        if not path.is_dir():
            raise FlagError(f"--{name}={values[name]} is a file; a folder is expected")
        _check_writable(name, values[name], path)
        return
    _check_creatable(name, values[name], path)


def _check_output_file(values: Mapping[str, Any], name: str, suffix: str | None = None) -> None:
    """A file output: written next to itself and renamed into place, so its folder must be writable."""
    if not values.get(name):
        return
    path = pathlib.Path(values[name])
    if suffix and path.suffix != suffix:
        raise FlagError(f"--{name}={values[name]} must end in {suffix}")
    if path.is_dir():
        raise FlagError(f"--{name}={values[name]} is a folder; a file is expected")
    if path.parent.exists():
        if not path.parent.is_dir():
            raise FlagError(f"--{name}={values[name]}: {str(path.parent)!r} is a file; a folder is expected")
        _check_writable(name, values[name], path.parent)
    else:
        _check_creatable(name, values[name], path.parent)


def _check_creatable(name: str, value: str, path: pathlib.Path) -> None:
    """`path` does not exist: its nearest existing ancestor must be a folder we can write in."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FlagError(f"--{name}={value}: {str(ancestor)!r} is a file; a folder is expected")
    _check_writable(name, value, ancestor)


def _check_writable(name: str, value: str, folder: pathlib.Path) -> None:
    # os.access also reports a read-only file system (EROFS).
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FlagError(f"--{name}={value}: cannot write in {str(folder)!r} (permission denied)")


def parse_loss_options(text: str | None) -> dict[str, Any] | None:
    """--loss_options: a JSON object of hyperparameter name -> number, string, bool or object (a miner's
    `{"name": ..., "config": {...}}`); None if unset."""
    if text is None:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise FlagError(f"--loss_options={text}: not JSON ({error.msg}); expected an object such as "
                        "'{\"margin\": 0.3}'") from None
    if not isinstance(options, dict):
        raise FlagError(f"--loss_options={text}: expected a JSON object such as '{{\"margin\": 0.3}}'")
    for name, value in options.items():
        if not isinstance(value, (int, float, str, bool, dict)) or (isinstance(value, float)
                                                                     and not math.isfinite(value)):
            raise FlagError(f"--loss_options: {name}={value!r} is not a finite number, a string, a bool or an object")
    return options


def usage_exit(message: str) -> NoReturn:
    """Prints a usage error as one line on stderr and exits with code 2."""
    print(f"pddm-tf: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (the `flags_parser` of `app.run`), with a refused flag as one line and exit code 2."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        usage_exit(str(error))
