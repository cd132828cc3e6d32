"""The `pddm-tf` command line, run as users run it (subprocesses)."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS = {"recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r", "r_precision"}


def pddm_tf(*args, cwd=None, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "pddm_tf.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def test_train_then_evaluate_export_gives_same_metrics(tmp_path):
    # Greek held out (24 characters: 20-way episodes fit), the 7 other alphabets rotated for training.
    held_out = ["--split_by=alphabet", "--test_groups=Greek", "--episodes=20way1shot,5way1shot",
                "--num_episodes=50"]
    small = ["--image_size=16", "--backbone_width=16", "--embedding_dim=16", "--batch_classes=8", *held_out]
    trained = pddm_tf("train", *small, "--epochs=1", "--steps_per_epoch=3", f"--export_dir={tmp_path}/export",
                      "--rotations", "--affine", "--lr_schedule=cosine", "--warmup_fraction=0.3",
                      "--weight_decay=1e-4", f"--json={tmp_path}/train.json", f"--log_dir={tmp_path}/tb")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stderr == ""  # quiet: no TensorFlow start-up lines, no warnings
    assert (tmp_path / "tb" / "projector_config.pbtxt").exists() and list((tmp_path / "tb" / "held_out").iterdir())
    assert "recall@1" in trained.stdout and "SavedModel exported" in trained.stdout
    # 218 characters of the other alphabets, each in 4 rotations; 24 upright Greek ones held out.
    assert "872 training classes" in trained.stdout and "24 held-out classes" in trained.stdout
    train_metrics = json.loads((tmp_path / "train.json").read_text())
    few_shot_keys = {"oneshot_20way", "oneshot_20way_ci95", "oneshot_5way", "oneshot_5way_ci95"}
    assert set(train_metrics) == KEYS | few_shot_keys

    evaluated = pddm_tf("evaluate", *held_out, f"--model_dir={tmp_path}/export", f"--json={tmp_path}/eval.json",
                        f"--plots={tmp_path}/plots")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "distance_histogram.png", "embedding_map.png", "recall_curve.png", "retrieval_grid.png"]
    eval_metrics = json.loads((tmp_path / "eval.json").read_text())
    # Keras model in training vs SavedModel in a new process, same held-out classes and episodes.
    for key in KEYS - {"nmi"}:
        np.testing.assert_allclose(eval_metrics[key], train_metrics[key], atol=1e-3, err_msg=key)
    np.testing.assert_allclose(eval_metrics["nmi"], train_metrics["nmi"], atol=0.02)
    for key in few_shot_keys:  # a float near-tie may flip one query of the 50 x N
        np.testing.assert_allclose(eval_metrics[key], train_metrics[key], atol=0.01, err_msg=key)
    assert 1 / 20 < train_metrics["oneshot_20way"] < 1 and 1 / 5 < train_metrics["oneshot_5way"] < 1


def test_unknown_dataset_is_a_clear_error():
    result = pddm_tf("train", "--dataset=imagenet21k", "--epochs=0")
    assert result.returncode != 0
    assert "imagenet21k" in result.stderr and "omniglot" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # the error, once, and nothing else


_PLUGIN = """
from pddm_tf import MetricLossModel, TripletLoss
from pddm_tf.methods import MethodSpec, register_method
from pddm_tf.options import Bound, Setting


def build(backbone, embedding_dim, settings):
    loss = TripletLoss(margin=settings["margin"], miner="batch_hard")
    return MetricLossModel(backbone, loss, embedding_dim=embedding_dim, dropout=settings["dropout"])


register_method(MethodSpec(name="plugin_triplet", summary="a plugin", build=build,
                           options={"margin": Setting(float, 0.1, "the margin", Bound(0, 1))}))
"""

_BROKEN_PLUGINS = {
    "raises_on_import": "raise RuntimeError('no licence server')\n",
    "has_a_syntax_error": "def broken(:\n",
    "builder_raises": ("from pddm_tf.methods import MethodSpec, register_method\n"
                       "def build(backbone, embedding_dim, settings):\n"
                       "    raise RuntimeError('out of coffee')\n"
                       "register_method(MethodSpec(name='plugin_broken', summary='', build=build))\n"),
}


def test_plugins_register_a_method_that_train_then_accepts(tmp_path):
    (tmp_path / "my_plugin.py").write_text(_PLUGIN)
    for name, text in _BROKEN_PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(text)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    small = ["--image_size=16", "--backbone_width=8", "--embedding_dim=8", "--epochs=1", "--steps_per_epoch=2",
             "--episodes=", "--nobackup"]

    def run(*args):
        return subprocess.run([sys.executable, "-m", "pddm_tf.cli", "train", *small, *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=600)

    unknown = run("--method=plugin_triplet")
    assert unknown.returncode == 2 and "--method=plugin_triplet: unknown method" in unknown.stderr
    missing = run("--plugins=no_such_plugin", "--method=plugin_triplet")
    assert missing.returncode == 2 and "--plugins: cannot import 'no_such_plugin'" in missing.stderr
    # A plugin method's options are checked as a built-in one's, before any work.
    refused = run("--plugins=my_plugin", "--method=plugin_triplet", '--loss_options={"margin": 3}')
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "pddm-tf: error: --loss_options margin=3.0 is out of range: allowed >= 0 and <= 1"]
    # issue 34 item 8: a broken plugin is one line naming it and its error; --verbose adds the traceback.
    for plugin, code, message in (
            ("raises_on_import", 2, "--plugins: failed to import 'raises_on_import': RuntimeError: no licence server"),
            ("has_a_syntax_error", 2, "--plugins: cannot import 'has_a_syntax_error': SyntaxError: invalid syntax"),
            ("builder_raises", 1, "--method=plugin_broken (builder_raises): its builder raised RuntimeError: out of "
                                  "coffee")):
        method = ["--method=plugin_broken"] if plugin == "builder_raises" else []
        result = run(f"--plugins={plugin}", *method)
        lines = result.stderr.splitlines()
        assert result.returncode == code and len(lines) == 1 and lines[0].startswith(f"pddm-tf: error: {message}"), (
            plugin, result.stderr[-2000:])
        verbose = run(f"--plugins={plugin}", *method, "--verbose")
        assert "Traceback" in verbose.stderr and verbose.stderr.splitlines()[-1] == lines[0]
    trained = run("--plugins=my_plugin", "--method=plugin_triplet", '--loss_options={"margin": 0.123}',
                  f"--save_model={tmp_path}/model.keras")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "recall@1" in trained.stdout
    # The saved model is the plugin's: its loss has the margin given on the command line and its miner.
    check = ("import pddm_tf, sys; from pddm_tf.export import load_keras_model; "
             f"m = load_keras_model({str(tmp_path / 'model.keras')!r}); "
             "print(type(m).__name__, m.embedding_loss.margin, m.embedding_loss.miner.name)")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=300)
    assert loaded.stdout.split() == ["MetricLossModel", "0.123", "batch_hard"], loaded.stderr[-2000:]


def test_help_does_not_import_tensorflow():
    code = ("import runpy, sys, time; sys.argv = ['pddm-tf', '--help']; start = time.perf_counter()\n"
            "try: runpy.run_module('pddm_tf.cli', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('tensorflow' in sys.modules, time.perf_counter() - start, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    imported, seconds = result.stderr.split()
    assert "--method" in result.stdout and "--log_dir" in result.stdout and "--verbosity" in result.stdout
    assert "--loss_options" in result.stdout and "--help_methods" in result.stdout
    assert imported == "False"
    assert float(seconds) < 3.0  # about 0.2 s; importing TensorFlow alone takes 5


def test_console_script_help_lists_the_flags():
    # The installed `pddm-tf` is a generated wrapper module that calls `run`, with argv[0] its path.
    code = "import sys; sys.argv = ['/venv/bin/pddm-tf', '--help']; from pddm_tf.cli import run; run()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "pddm-tf train [flags]" in result.stdout, result.stderr[-2000:]  # the CLI's docstring
    for flag in ("--method", "--plugins", "--recipe", "--export_dir"):
        assert flag in result.stdout, flag


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    result = pddm_tf("train", f"--dataset=folder:{tmp_path}/empty", "--epochs=0")
    assert result.returncode != 0
    assert str(tmp_path / "empty") in result.stderr and "no images" in result.stderr.lower()


def test_class_with_one_image_and_k_2_is_a_clear_error(tmp_path):
    import tensorflow as tf

    for name, count in (("a", 3), ("b", 1), ("c", 3)):
        (tmp_path / "d" / name).mkdir(parents=True)
        for i in range(count):
            png = tf.io.encode_png(np.full((8, 8, 3), i * 40, np.uint8)).numpy()
            (tmp_path / "d" / name / f"{i}.png").write_bytes(png)
    result = pddm_tf("train", f"--dataset=folder:{tmp_path}/d", "--test_fraction=0", "--batch_classes=2",
                     "--batch_per_class=2", "--image_size=16", "--epochs=1", "--steps_per_epoch=1")
    assert result.returncode != 0
    assert "'b'" in result.stderr and "batch_per_class=2" in result.stderr


def _readme_main_command() -> str:
    """The `pddm-tf ...` part of the README's first (main-job) command."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    return re.search(r"(pddm-tf train[^\n&;]*)", block).group(1).strip()


@pytest.mark.slow
def test_readme_main_job_runs_as_written(tmp_path):
    command = shlex.split(_readme_main_command())
    assert command[0] == "pddm-tf"
    # The command exactly as written, shortened to 40 steps (absl keeps a flag's last value): the
    # full 1,000-step run takes 4 minutes of CI's 20 and is measured in BENCHMARKS.md section 1.
    result = pddm_tf(*command[1:], "--epochs=2", "--steps_per_epoch=20", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # It says which of its settings came from omniglot's own defaults, and trains on the rotated classes.
    assert "omniglot's defaults: --affine=True, --batch_classes=32, --rotations=True" in result.stdout
    assert "484 training classes" in result.stdout  # 121 characters and their three rotations
    for key in KEYS:
        assert re.search(rf"^{re.escape(key)}\s*\|\s*0\.\d+", result.stdout, re.M), key
    export = re.search(r"SavedModel exported to (\S+)", result.stdout).group(1)
    assert (tmp_path / export / "saved_model.pb").exists() or pathlib.Path(export, "saved_model.pb").exists()
