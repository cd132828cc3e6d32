"""The checks of a `TrainConfig` made before any work, and the path checks the command line shares.

`check_config` refuses, with one `ConfigError` line naming the setting, what `pddm-tf train` refuses:

* every field against its `Setting` (type, choices, bounds; floats also for NaN and infinity), so
  `epochs=1.5`, `embedding_dim=True` or `episodes="5way1shot"` (a string for a list) are refused;
* the method: a known one, only the method flags it uses, its options typed and in bounds, and its
  own check (e.g. Divide-and-Conquer's embedding slices);
* combinations (`augment` with `affine`, `worker_hosts` without `multi_worker`, ...) and every path:
  inputs exist, outputs can be written.

Pure Python with no TensorFlow import, so a refused run returns at once.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pddm_tf._setting_groups import get
from pddm_tf.methods.catalog import METHOD_SPECS
from pddm_tf.methods.spec import check_method_config
from pddm_tf.options import ConfigError

if TYPE_CHECKING:
    from pddm_tf.training.config import TrainConfig

#: A few-shot setting, as `pddm_tf.evaluation.few_shot.parse_setting` reads it.
_EPISODE = re.compile(r"^(\d+)way(\d+)shot$")


def check_config(config: TrainConfig, fields: Mapping[str, tuple[str, str, Any]]) -> None:
    """Raises `ConfigError` for the first refused value of `config` (`fields`: `config.FLAGS`, flag -> (group,
    dotted path in it, Setting))."""
    for flag, (group, path, spec) in fields.items():
        value = get(getattr(config, group), path)
        if flag != "loss_options":
            spec.parse(f"--{flag}", value)
    method = check_method_config(config.method)
    values = config.flag_values()
    for flag, default in method.flags.items():
        if values[flag] is None:
            values[flag] = default
    values["loss_options"] = dict(config.method.options or {}) or None
    if method.check is not None:
        method.check(values)
    check_train_values(values)


def check_train_values(values: Mapping[str, Any]) -> None:
    """The combination and path checks of `pddm-tf train` (flag name -> value, method flags resolved)."""
    for setting in values.get("episodes") or ():
        match = _EPISODE.match(setting.strip().lower())
        if not match or int(match[1]) < 2 or int(match[2]) < 1:
            raise ConfigError(f"--episodes: few-shot setting {setting!r} must read '<N>way<K>shot' with N >= 2 and "
                              "K >= 1, e.g. 20way1shot")
    if values.get("augment") and values.get("affine"):
        raise ConfigError("--augment and --affine are two different training augmentations; choose one")
    hosts = values.get("worker_hosts")
    if hosts:
        if values.get("strategy") != "multi_worker":
            raise ConfigError(f"--worker_hosts is for --strategy=multi_worker, not --strategy={values.get('strategy')}")
        if values.get("task_index", 0) >= len(hosts):
            raise ConfigError(f"--task_index={values['task_index']} is out of range: allowed 0 to {len(hosts) - 1} "
                              f"for {len(hosts)} --worker_hosts")
    check_dataset(values.get("dataset"), "dataset")
    check_output_dir(values, "export_dir")
    check_output_dir(values, "log_dir")
    check_output_file(values, "json")
    check_output_file(values, "save_model", suffix=".keras")
    if values.get("backup", True) and values.get("epochs", 0) > 0:
        if values.get("strategy") == "multi_worker" and not values.get("backup_dir"):
            raise ConfigError("--strategy=multi_worker needs --backup_dir on storage every worker sees (or --nobackup)")
        check_output_dir(values, "backup_dir")


def methods_using(flag: str) -> list[str]:
    """The methods that use a general method flag."""
    return [name for name, spec in METHOD_SPECS.items() if flag in spec.flags]


def check_dataset(spec: str | None, name: str) -> None:
    """A `folder:PATH` dataset or gallery must be an existing folder."""
    if spec and spec.startswith("folder:"):
        path = pathlib.Path(spec[len("folder:"):])
        if not path.exists():
            raise ConfigError(f"--{name}={spec}: no such path {str(path)!r}")
        if not path.is_dir():
            raise ConfigError(f"--{name}={spec}: {str(path)!r} is a file; a folder of class folders is expected")


def check_input(values: Mapping[str, Any], name: str, kind: str = "any") -> None:
    """An input path must exist (and be a file when `kind` is "file")."""
    path = pathlib.Path(values[name])
    if not path.exists():
        raise ConfigError(f"--{name}={values[name]}: no such path")
    if kind == "file" and path.is_dir():
        raise ConfigError(f"--{name}={values[name]} is a folder; a file is expected")


def check_output_dir(values: Mapping[str, Any], name: str) -> None:
    """A folder output: an existing folder we can write in, or a path whose folders we can create."""
    if not values.get(name):
        return
    path = pathlib.Path(values[name])
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--{name}={values[name]} is a file; a folder is expected")
        _check_writable(name, values[name], path)
        return
    _check_creatable(name, values[name], path)


def check_output_file(values: Mapping[str, Any], name: str, suffix: str | None = None) -> None:
    """A file output: written next to itself and renamed into place, so its folder must be writable."""
    if not values.get(name):
        return
    path = pathlib.Path(values[name])
    if suffix and path.suffix != suffix:
        raise ConfigError(f"--{name}={values[name]} must end in {suffix}")
    if path.is_dir():
        raise ConfigError(f"--{name}={values[name]} is a folder; a file is expected")
    if path.parent.exists():
        if not path.parent.is_dir():
            raise ConfigError(f"--{name}={values[name]}: {str(path.parent)!r} is a file; a folder is expected")
        _check_writable(name, values[name], path.parent)
    else:
        _check_creatable(name, values[name], path.parent)


def _check_creatable(name: str, value: str, path: pathlib.Path) -> None:
    """`path` does not exist: its nearest existing ancestor must be a folder we can write in."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--{name}={value}: {str(ancestor)!r} is a file; a folder is expected")
    _check_writable(name, value, ancestor)


def _check_writable(name: str, value: str, folder: pathlib.Path) -> None:
    # os.access also reports a read-only file system (EROFS).
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--{name}={value}: cannot write in {str(folder)!r} (permission denied)")
