"""`pddm_tf.training`: a run as a `TrainConfig` value, trained by `train(config)` as `pddm-tf train` does."""

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from absl import flags

from pddm_tf import _setting_groups as setting_groups
from pddm_tf.cli import settings
from pddm_tf.cli.commands import train as train_command
from pddm_tf.methods import recipes
from pddm_tf.options import ConfigError
from pddm_tf.training import ModelConfig, RunConfig, TrainConfig, train
from pddm_tf.training import config as config_module
from pddm_tf.training import run as training_run

FLAGS = flags.FLAGS

# A short run on the embedded Omniglot data: two held-out alphabets, so few-shot episodes exist.
_TINY = dict(image_size=16, backbone_width=8, embedding_dim=8, epochs=1, steps_per_epoch=3, batch_classes=4,
             batch_per_class=2, eval_batch_size=64, test_groups=("Greek", "Latin"), episodes=("5way1shot",),
             num_episodes=20, backup=False)


def test_the_command_line_flags_are_the_config_fields_with_their_defaults():
    config = TrainConfig()
    for name, (group, path, _) in config_module.FLAGS.items():
        value = setting_groups.get(getattr(config, group), path)
        if name == "log_dir":  # absl's own flag; the config's None means "no TensorBoard logs"
            assert value is None
            continue
        assert (list(value) if isinstance(value, tuple) else value) == FLAGS[name].default, name
    # Every flag of `pddm-tf train` that shapes a run is a field (evaluate/export/runtime flags are not).
    not_fields = {"recipe", "onednn", "plugins", "help_methods", "verbose"}
    cli_flags = {name for name in FLAGS if FLAGS.find_module_defining_flag(name) == settings.__name__}
    assert cli_flags - not_fields == set(TrainConfig.field_names()) - {"log_dir"}


def test_from_flags_with_flags_and_json_options():
    config = TrainConfig.from_flags(test_groups=["Greek", "Latin"], loss_options='{"margin": 0.3}',
                                    method="triplet_batchhard")
    assert config.data.test_groups == ("Greek", "Latin") and config.method.options == {"margin": 0.3}
    assert config.flag_values()["loss_options"] == json.dumps({"margin": 0.3})
    changed = config.with_flags(method="npair", epochs=2, loss_options=None)
    assert (changed.method.name, changed.optimization.epochs, config.method.name) == ("npair", 2, "triplet_batchhard")
    assert changed.replace(run=RunConfig(seed=7)).run.seed == 7
    with pytest.raises(ConfigError, match="TrainConfig has no setting 'epoch'; its settings are dataset"):
        config.with_flags(epoch=3)
    with pytest.raises(ConfigError, match="--loss_options=.*not JSON"):
        TrainConfig.from_flags(loss_options="{margin: 0.3}")


def test_the_flat_spellings_of_the_last_release_warn_and_still_work():
    """Issue 30 item 7: each old spelling works for one release, with a warning naming the new one."""
    expected = ("TrainConfig(epochs=..., method=...) is deprecated: use TrainConfig.from_flags(epochs=..., "
                "method=...) or TrainConfig(optimization=OptimizationConfig(epochs=...), "
                "method=MethodConfig(name=...))")
    with pytest.warns(DeprecationWarning, match=re.escape(expected)):
        config = TrainConfig(epochs=3, method="npair")
    assert config == TrainConfig.from_flags(epochs=3, method="npair")
    with pytest.warns(DeprecationWarning, match=r"TrainConfig.epochs is deprecated: use config.optimization.epochs"):
        assert config.epochs == 3
    with pytest.warns(DeprecationWarning, match=r"TrainConfig.method is deprecated|replace\(seed=\.\.\.\) is "
                                                r"deprecated: use with_flags\(seed=\.\.\.\)"):
        assert config.replace(seed=4).run.seed == 4
    with pytest.warns(DeprecationWarning, match=r"use TrainConfig.from_flags\(loss_options=\.\.\.\)"):
        assert TrainConfig(loss_options='{"l2_reg": 0.1}').method.options == {"l2_reg": 0.1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spellings do not warn
        TrainConfig.from_flags(epochs=3).with_flags(seed=2).replace(model=ModelConfig(embedding_dim=8)).check()


@pytest.mark.parametrize("flags,message", [
    # issue 34 item 9: what the command line refuses, TrainConfig refuses too, naming the setting.
    ({"split_by": "letter"}, "--split_by=letter: expected one of character, alphabet"),
    ({"lr_schedule": "linear"}, "--lr_schedule=linear: expected one of constant, cosine"),
    ({"pooling": "sum"}, "--pooling=sum: expected one of avg, max, gem"),
    ({"strategy": "tpu"}, "--strategy=tpu: expected one of default, mirrored, multi_worker"),
    ({"mining": "all"}, "--mining=all: expected one of per_pair, hardest"),
    ({"small_classes": "drop"}, "--small_classes=drop: expected one of error, cycle"),
    ({"epochs": 1.5}, "--epochs=1.5 is not an integer"),
    ({"epochs": "3"}, "--epochs='3' is a string; expected an integer"),
    ({"embedding_dim": True}, "--embedding_dim=True is a bool; expected an integer"),
    ({"learning_rate": "fast"}, "--learning_rate='fast' is a string; expected a number"),
    ({"episodes": "5way1shot"}, "--episodes='5way1shot' is a string; expected a list"),
    ({"test_groups": "Greek"}, "--test_groups='Greek' is a string; expected a list"),
    ({"image_size": 100_000}, "--image_size=100000 is out of range: allowed >= 1 and <= 4096 (a 4096 x 4096 x 3 "
                              "float32 image takes 201 MB"),
    ({"embedding_dim": 10**20}, "--embedding_dim=100000000000000000000 is out of range: allowed >= 1 and <= 65536"),
    ({"backbone_width": 10**20}, "--backbone_width=100000000000000000000 is out of range: allowed >= 1 and <= 4096"),
    ({"max_image_pixels": 10**20}, "--max_image_pixels=100000000000000000000 is out of range: allowed >= 1 and <= "
                                   "268435456"),
    ({"batch_per_class": 1}, "--batch_per_class=1 is out of range: allowed >= 2"),
    ({"learning_rate": float("nan")}, "--learning_rate=nan is out of range"),
])
def test_check_refuses_what_the_command_line_refuses(flags, message):
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_flags(**flags).check()
    assert message in str(error.value) and "\n" not in str(error.value)
    # The same value given to the nested constructor is refused by check().
    (flag, value), = flags.items()
    group, path, _ = config_module.FLAGS[flag]
    nested = TrainConfig(**{group: setting_groups.replace_paths(config_module.GROUPS[group](), {path: value})})
    with pytest.raises(ConfigError, match=re.escape(message)):
        nested.check()
    # And the command line, before any work: one line, exit code 2.
    if not isinstance(value, str) and not (isinstance(value, float) and value != value):
        text = ",".join(value) if isinstance(value, tuple) else str(value).lower() if isinstance(value, bool) else value
        code, err = _cli_refusal(f"--{flag}={text}")
        assert code == 2 and err.count("\n") == 1 and err.startswith("pddm-tf: error: "), err


def _cli_refusal(*args):
    result = subprocess.run([sys.executable, "-m", "pddm_tf.cli", "train", *args], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return result.returncode, result.stderr


def test_check_runs_before_any_work(monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(training_run, "load_split", no_data)
    with pytest.raises(ConfigError, match="--embedding_dim=10 is not divisible by --num_learners=4"):
        train(TrainConfig.from_flags(method="dc_margin", embedding_dim=10))
    with pytest.raises(ConfigError, match="method npair has no option margn"):
        train(TrainConfig.from_flags(method="npair", loss_options={"margn": 1}))
    with pytest.raises(ConfigError, match="--backbone=ResNet5: unknown backbone"):
        train(TrainConfig.from_flags(backbone="ResNet5"))


def test_a_recipe_is_a_config():
    recipe = recipes.get_recipe("omniglot")
    config = recipe.config(epochs=2)
    values = config.flag_values()
    for name, value in recipe.flags.items():
        if name != "epochs":
            assert values[name] == (list(value) if isinstance(value, tuple) else value), name
    assert config.optimization.epochs == 2 and config.run.seed == TrainConfig().run.seed
    with pytest.raises(ValueError, match="no setting 'epoks'"):
        recipe.config(epoks=2)
    # A PDDM recipe's margins do not apply to another method: dropped, not refused.
    assert recipes.get_recipe("pddm_cub").config(method="npair").method.pddm.alpha is None
    assert recipes.get_recipe("pddm_cub").config().method.pddm.normalize_inputs is False  # issue 31


def test_the_backup_folder_is_named_by_what_the_run_trains():
    config = TrainConfig.from_flags(**_TINY)
    assert training_run.backup_dir(config) == training_run.backup_dir(config.with_flags(json="/tmp/metrics.json",
                                                                                        num_episodes=5))
    assert training_run.backup_dir(config) != training_run.backup_dir(config.with_flags(learning_rate=5e-4))
    assert training_run.backup_dir(config.with_flags(backup_dir="/somewhere")) == "/somewhere"


@pytest.mark.slow
def test_train_from_python_equals_the_command_line(tmp_path):
    """The same run through `train(config)` and through `pddm-tf train`'s flags: the same numbers."""
    config = TrainConfig.from_flags(**_TINY, seed=3, json=str(tmp_path / "python.json"))
    metrics = train(config)
    assert set(metrics) >= {"recall@1", "map@r", "oneshot_5way"}
    assert json.loads((tmp_path / "python.json").read_text()) == pytest.approx(metrics)
    args = [f"--{name}={','.join(value) if isinstance(value, tuple) else value}" for name, value in _TINY.items()
            if name != "backup"] + ["--nobackup", "--seed=3"]
    FLAGS.unparse_flags()
    FLAGS(["pddm-tf", *args])
    try:
        from_cli = train_command.run()
    finally:
        FLAGS.unparse_flags()
    assert from_cli.keys() == metrics.keys()
    for key, value in metrics.items():
        assert np.isfinite(value) and from_cli[key] == pytest.approx(value, abs=1e-6), key
