"""`pddm_tf.training`: a run as a `TrainConfig` value, trained by `train(config)` as `pddm-tf train` does."""

import json

import numpy as np
import pytest
from absl import flags

from pddm_tf.cli import main as cli
from pddm_tf.cli.validation import FlagError
from pddm_tf.methods import recipes
from pddm_tf.training import TrainConfig, train
from pddm_tf.training import run as training_run

FLAGS = flags.FLAGS

# A short run on the embedded Omniglot data: two held-out alphabets, so few-shot episodes exist.
_TINY = dict(image_size=16, backbone_width=8, embedding_dim=8, epochs=1, steps_per_epoch=3, batch_classes=4,
             batch_per_class=2, eval_batch_size=64, test_groups=("Greek", "Latin"), episodes=("5way1shot",),
             num_episodes=20, backup=False)


def test_the_command_line_defaults_are_the_config_defaults():
    config = TrainConfig()
    for name in TrainConfig.field_names():
        if name == "log_dir":  # absl's own flag; the config's None means "no TensorBoard logs"
            assert config.log_dir is None
            continue
        default = FLAGS[name].default
        value = getattr(config, name)
        assert (list(value) if isinstance(value, tuple) else value) == default, name
    # Every flag of `pddm-tf train` that shapes a run is a field (evaluate/export/runtime flags are not).
    not_fields = {"recipe", "model_dir", "plots", "onednn", "keras_model", "gallery", "search_k", "search_rerank",
                  "plugins"}
    cli_flags = {name for name in FLAGS if FLAGS.find_module_defining_flag(name) == cli.__name__}
    assert cli_flags - not_fields == set(TrainConfig.field_names()) - {"log_dir"}


def test_replace_lists_and_json_options():
    config = TrainConfig(test_groups=["Greek", "Latin"], loss_options='{"margin": 0.3}')
    assert config.test_groups == ("Greek", "Latin") and config.loss_options == {"margin": 0.3}
    assert config.flag_values()["loss_options"] == json.dumps({"margin": 0.3})
    changed = config.replace(method="triplet_batchhard", epochs=2)
    assert (changed.method, changed.epochs, config.method) == ("triplet_batchhard", 2, "pddm_quadruplet")
    with pytest.raises(ValueError, match="TrainConfig has no field 'epoch'; its fields are dataset"):
        config.replace(epoch=3)
    with pytest.raises(FlagError, match="--loss_options=.*not JSON"):
        TrainConfig(loss_options="{margin: 0.3}")


def test_check_refuses_what_the_command_line_refuses():
    with pytest.raises(FlagError, match="--embedding_dim=10 is not divisible by --num_learners=4"):
        TrainConfig(method="dc_margin", embedding_dim=10).check()
    with pytest.raises(FlagError, match="--batch_per_class=1"):
        train(TrainConfig(batch_per_class=1))  # refused before any work


def test_a_recipe_is_a_config():
    recipe = recipes.get_recipe("omniglot")
    config = recipe.config(epochs=2)
    for name, value in recipe.flags.items():
        if name != "epochs":
            assert getattr(config, name) == value, name
    assert config.epochs == 2 and config.seed == TrainConfig().seed
    with pytest.raises(ValueError, match="no field 'epoks'"):
        recipe.config(epoks=2)


def test_the_backup_folder_is_named_by_what_the_run_trains():
    config = TrainConfig(**_TINY)
    assert training_run.backup_dir(config) == training_run.backup_dir(config.replace(json="/tmp/metrics.json",
                                                                                     num_episodes=5))
    assert training_run.backup_dir(config) != training_run.backup_dir(config.replace(learning_rate=5e-4))
    assert training_run.backup_dir(config.replace(backup_dir="/somewhere")) == "/somewhere"


@pytest.mark.slow
def test_train_from_python_equals_the_command_line(tmp_path):
    """The same run through `train(config)` and through `pddm-tf train`'s flags: the same numbers."""
    config = TrainConfig(**_TINY, seed=3, json=str(tmp_path / "python.json"))
    metrics = train(config)
    assert set(metrics) >= {"recall@1", "map@r", "oneshot_5way"}
    assert json.loads((tmp_path / "python.json").read_text()) == pytest.approx(metrics)
    args = [f"--{name}={','.join(value) if isinstance(value, tuple) else value}" for name, value in _TINY.items()
            if name != "backup"] + ["--nobackup", "--seed=3"]
    FLAGS.unparse_flags()
    FLAGS(["pddm-tf", *args])
    try:
        from_cli = cli.train()
    finally:
        FLAGS.unparse_flags()
    assert from_cli.keys() == metrics.keys()
    for key, value in metrics.items():
        assert np.isfinite(value) and from_cli[key] == pytest.approx(value, abs=1e-6), key
