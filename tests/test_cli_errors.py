"""`pddm-tf` when things go wrong: refused flags, failed or interrupted outputs, foreign models, Ctrl-C."""

import json
import math
import os
import pathlib
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from pddm_tf import atomic, export
from pddm_tf.cli import main as cli
from pddm_tf.cli import validation
from pddm_tf.cli.validation import FlagError, check_flags
from pddm_tf.methods.catalog import METHOD_SPECS
from pddm_tf.methods.spec import GENERAL_FLAGS
from pddm_tf.training import config as config_module
from pddm_tf.training import config_checks
from pddm_tf.training.fault_tolerance import backup_status

FLAGS = flags.FLAGS
NAN = float("nan")


def _defaults(**overrides):
    """Every flag of `pddm-tf` at its default, with `overrides`: the values `check_flags` sees."""
    values = {name: FLAGS[name].default for name in FLAGS}
    values.update(overrides)
    return values


# --------------------------------------------------------------------------- every flag's range

# (flag, value, allowed), written from each flag's meaning: the edges and one step past them.
BOUND_CASES = [
    ("test_fraction", -0.01, False), ("test_fraction", 0.0, True), ("test_fraction", 0.99, True),
    ("test_fraction", 1.0, False), ("test_fraction", NAN, False),
    ("seed", -1, False), ("seed", 0, True), ("seed", 2**32 - 1, True), ("seed", 2**32, False),
    ("image_size", 0, False), ("image_size", 1, True), ("image_size", 4096, True), ("image_size", 4097, False),
    ("channels", 0, False), ("channels", 1, True), ("channels", 2, False), ("channels", 3, True),
    ("channels", 4, False),
    ("eval_batch_size", 0, False), ("eval_batch_size", 1, True), ("eval_batch_size", 65537, False),
    ("rerank", -1, False), ("rerank", 0, True), ("xbm", -1, False), ("xbm", 0, True), ("xbm", 10_000_001, False),
    ("embedding_dim", 0, False), ("embedding_dim", 1, True), ("embedding_dim", 65536, True),
    ("embedding_dim", 65537, False),
    ("dropout", -0.1, False), ("dropout", 0.0, True), ("dropout", 0.9, True), ("dropout", 1.0, False),
    ("backbone_width", 0, False), ("backbone_width", 1, True), ("backbone_width", 4097, False),
    ("epochs", -1, False), ("epochs", 0, True),
    ("steps_per_epoch", -3, False), ("steps_per_epoch", 0, True),
    ("batch_classes", 1, False), ("batch_classes", 2, True),
    ("batch_per_class", 1, False), ("batch_per_class", 2, True),
    ("num_episodes", 0, False), ("num_episodes", 1, True),
    ("weight_decay", -1e-4, False), ("weight_decay", 0.0, True),
    ("warmup_fraction", -0.1, False), ("warmup_fraction", 0.0, True), ("warmup_fraction", 0.5, True),
    ("warmup_fraction", 1.0, False),
    ("ema_momentum", -0.1, False), ("ema_momentum", 0.0, True), ("ema_momentum", 0.99, True),
    ("ema_momentum", 1.0, False),
    ("learning_rate", 0.0, False), ("learning_rate", 1e-6, True), ("learning_rate", math.inf, False),
    ("learning_rate", NAN, False),
    ("alpha", -0.1, False), ("alpha", 0.0, True), ("alpha", math.inf, False),
    ("beta", -0.1, False), ("beta", 0.0, True),
    ("embedding_weight", -0.1, False), ("embedding_weight", 0.0, True),
    ("hdml_alpha", 0.0, False), ("hdml_alpha", 0.1, True),
    ("hdml_beta", 0.0, False), ("hdml_beta", 0.1, True),
    ("num_learners", 0, False), ("num_learners", 1, True),
    ("recluster_every", -1, False), ("recluster_every", 0, True),
    ("conquer_epochs", -1, False), ("conquer_epochs", 0, True),
    ("eval_every", -1, False), ("eval_every", 0, True),
    ("task_index", -1, False), ("task_index", 0, True),
    ("search_k", 0, False), ("search_k", 1, True),
    ("search_rerank", -1, False), ("search_rerank", 0, True),
    ("max_image_pixels", 0, False), ("max_image_pixels", 1, True), ("max_image_pixels", 2**28, True),
    ("max_image_pixels", 2**28 + 1, False),
]


#: The export command's own numeric flags (the others are TrainConfig fields).
_EXPORT_FLAGS = {"search_k", "search_rerank"}


def test_every_numeric_flag_has_a_range_and_a_case():
    numeric = {name for name, (_, _, spec) in config_module.FLAGS.items()
               if {int, float} & set(spec.kinds) and bool not in spec.kinds}
    unbounded = {name for name in numeric if config_module.FLAGS[name][2].bound is None}
    assert not unbounded, "give every int/float field a bound: setting(..., bound=Bound(...))"
    tested = {name for name, _, allowed in BOUND_CASES if not allowed}
    assert numeric | _EXPORT_FLAGS == tested, "give every int/float flag a refused case in BOUND_CASES"


def _command_values(name, value):
    """The flag values and command that check `name`: a method flag with a method that uses it, an export
    flag with export's required flags."""
    if name in _EXPORT_FLAGS:
        return "export", _defaults(**{name: value}, keras_model="/no/such.keras", export_dir="/tmp/x")
    if name in GENERAL_FLAGS:
        method = next(m for m, spec in METHOD_SPECS.items() if name in spec.flags)
        return "train", _defaults(**{name: value}, method=method)
    return "train", _defaults(**{name: value})


@pytest.mark.parametrize("name,value,allowed", BOUND_CASES)
def test_flag_range(name, value, allowed):
    command, values = _command_values(name, value)
    if allowed:
        if command == "train":
            check_flags(command, values)
        return
    with pytest.raises(FlagError) as error:
        check_flags(command, values)
    message = str(error.value)
    assert message.startswith(f"--{name}={value} is out of range: allowed ") and "\n" not in message


# --------------------------------------------------------------------------- combinations and paths

COMBINATION_CASES = [
    ("train", {"method": "contrastive", "rerank": 5}, "--rerank=5 is not used by --method=contrastive; it applies "
                                                      "to dc_pddm, euclidean_quadruplet, hdml_pddm, pddm_quadruplet"),
    ("train", {"method": "hdml_npair", "rerank": 5}, "--rerank=5 is not used by --method=hdml_npair"),
    ("train", {"method": "dc_margin", "pddm_normalize_inputs": False}, "--pddm_normalize_inputs=false is not used "
                                                                       "by --method=dc_margin"),
    ("train", {"method": "dc_pddm", "pddm_normalize_inputs": True}, None),
    ("train", {"method": "hdml_pddm", "pddm_normalize_inputs": True}, None),
    ("train", {"method": "pddm_triplet", "rerank": 5}, None),
    ("train", {"method": "dc_pddm", "embedding_dim": 10, "num_learners": 4}, "--embedding_dim=10 is not divisible"),
    ("train", {"method": "dc_pddm", "embedding_dim": 12, "num_learners": 4}, None),
    ("train", {"worker_hosts": ["a:1", "b:2"]}, "--worker_hosts is for --strategy=multi_worker"),
    ("train", {"strategy": "multi_worker", "worker_hosts": ["a:1", "b:2"], "task_index": 2,
               "backup_dir": "/tmp/b"}, "--task_index=2 is out of range: allowed 0 to 1"),
    ("train", {"strategy": "multi_worker", "epochs": 1}, "--strategy=multi_worker needs --backup_dir"),
    ("train", {"strategy": "multi_worker", "epochs": 1, "backup": False}, None),
    ("train", {"save_model": "model.h5"}, "--save_model=model.h5 must end in .keras"),
    ("train", {"augment": True, "affine": True}, "--augment and --affine are two different training augmentations"),
    ("train", {"method": "dc_margin", "ema_momentum": 0.99}, "--ema_momentum is not supported with --method=dc_margin"),
    ("train", {"method": "pddm_quadruplets"}, "--method=pddm_quadruplets: unknown method; expected one of "),
    ("train", {"method": "triplet_batchhard", "loss_options": '{"margin": 0.3}'}, None),
    # A PDDM flag that names an option of the chosen method points to that option's spelling, which is accepted.
    ("train", {"method": "margin", "alpha": 0.3}, "--alpha=0.3 is not used by --method=margin; it applies to dc_pddm, "
                                                  "euclidean_quadruplet, hdml_pddm, pddm_quadruplet, pddm_triplet; "
                                                  "--method=margin's own alpha is set with "
                                                  "--loss_options='{\"alpha\": 0.3}'"),
    ("train", {"method": "margin", "loss_options": '{"alpha": 0.3}'}, None),
    ("train", {"method": "pddm_quadruplet", "loss_options": '{"margin": 0.3}'},
     "--loss_options: method pddm_quadruplet has no option margin; its options are: none"),
    ("train", {"method": "npair", "loss_options": '{"margn": 0.3}'},
     "--loss_options: method npair has no option margn; its options are: l2_reg"),
    ("train", {"method": "npair", "loss_options": "margin=0.3"}, "--loss_options=margin=0.3: not JSON"),
    ("train", {"method": "npair", "loss_options": "[0.3]"}, "expected a JSON object"),
    ("train", {"method": "npair", "loss_options": '{"l2_reg": NaN}'}, "--loss_options l2_reg=nan is out of range"),
    ("train", {"dataset": "folder:/no/such/folder"}, "no such path"),
    ("evaluate", {}, "evaluate needs --model_dir"),
    ("evaluate", {"model_dir": "/no/such/model"}, "--model_dir=/no/such/model: no such path"),
    ("export", {"export_dir": "/tmp/x"}, "export needs --keras_model"),
]


@pytest.mark.parametrize("command,overrides,refused", COMBINATION_CASES)
def test_flag_combination(command, overrides, refused):
    if refused is None:
        check_flags(command, _defaults(**overrides))
    else:
        with pytest.raises(FlagError, match=re.escape(refused)):
            check_flags(command, _defaults(**overrides))


def test_output_paths_are_checked_before_any_work(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    a_folder = tmp_path / "folder"
    a_folder.mkdir()
    keras_file = tmp_path / "m.keras"
    keras_file.write_text("x")
    (tmp_path / "dir.keras").mkdir()
    cases = [
        ("train", {"export_dir": str(a_file)}, "is a file; a folder is expected"),
        ("train", {"export_dir": str(a_file / "sub")}, f"{str(a_file)!r} is a file; a folder is expected"),
        ("train", {"export_dir": str(tmp_path / "new" / "deeper")}, None),
        ("train", {"json": str(a_folder)}, "is a folder; a file is expected"),
        ("train", {"json": str(a_file / "m.json")}, "is a file; a folder is expected"),
        ("train", {"json": str(tmp_path / "new" / "m.json")}, None),
        ("train", {"save_model": str(tmp_path / "dir.keras")}, "is a folder; a file is expected"),
        ("train", {"save_model": str(tmp_path / "new" / "m.keras")}, None),
        ("train", {"epochs": 1, "backup_dir": str(a_file)}, "is a file; a folder is expected"),
        ("train", {"epochs": 1, "backup_dir": str(a_file), "backup": False}, None),  # no backup made
        ("train", {"epochs": 0, "backup_dir": str(a_file)}, None),  # nothing to back up
        ("evaluate", {"model_dir": str(a_folder), "json": str(a_folder)}, "--json"),
        ("evaluate", {"model_dir": str(a_folder), "plots": str(a_file)}, "--plots"),
        ("train", {"log_dir": str(a_file)}, "--log_dir"),
        ("export", {"keras_model": str(a_folder), "export_dir": str(a_folder)}, "is a folder; a file is expected"),
        ("export", {"keras_model": str(keras_file), "export_dir": str(a_file)}, "is a file; a folder is expected"),
        ("export", {"keras_model": str(keras_file), "export_dir": str(a_folder)}, None),
        ("export", {"keras_model": str(keras_file), "export_dir": str(a_folder), "search_rerank": 3},
         "--search_rerank=3 re-ranks the results of `search`, which needs --gallery"),
    ]
    for command, overrides, refused in cases:
        if refused is None:
            check_flags(command, _defaults(**overrides))
        else:
            with pytest.raises(FlagError, match=re.escape(refused)):
                check_flags(command, _defaults(**overrides))

    # A folder that cannot be written in, whether it exists or is to be created in one.
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(config_checks.os, "access",
                        lambda path, mode: False if pathlib.Path(path) == readonly else real_access(path, mode))
    for overrides in ({"export_dir": str(readonly)}, {"export_dir": str(readonly / "a" / "b")},
                      {"json": str(readonly / "m.json")}, {"save_model": str(readonly / "m.keras")}):
        with pytest.raises(FlagError, match=re.escape(f"cannot write in {str(readonly)!r} (permission denied)")):
            check_flags("train", _defaults(**overrides))
    check_flags("train", _defaults(export_dir=str(tmp_path / "writable")))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write in any folder")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        with pytest.raises(FlagError, match="permission denied"):
            check_flags("train", _defaults(export_dir=str(readonly / "export")))
    finally:
        readonly.chmod(0o700)


def test_every_recipe_passes_the_checks():
    from pddm_tf.methods.recipes import RECIPES

    for recipe in RECIPES.values():
        check_flags("train", _defaults(**recipe.flags))


# --------------------------------------------------------------------------- one line, exit code 2


@pytest.fixture
def run_cli(capsys):
    """Runs `pddm-tf <args>` in this process; returns (exit code, stdout, stderr)."""

    def run(*args):
        code = 0
        try:
            validation.parse_flags(["pddm-tf", *args])
            cli.main(["pddm-tf", *[a for a in args if not a.startswith("--")]])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
            if isinstance(exit_.code, str):  # what the interpreter prints when it exits
                print(exit_.code, file=sys.stderr)
        finally:
            FLAGS.unparse_flags()
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize("args,message", [
    (["train", "--steps_per_epoch=-3"], "--steps_per_epoch=-3 is out of range: allowed >= 0"),
    (["train", "--method=contrastive", "--rerank=5"], "--rerank=5 is not used by --method=contrastive"),
    (["train", "--method=dc_margin", "--nopddm_normalize_inputs"], "--pddm_normalize_inputs=false is not used by "
                                                                   "--method=dc_margin"),
    (["train", "--method=triplet_batchhard", "--rerank=3"], "--rerank=3 is not used by --method=triplet_batchhard"),
    (["train", "--method=npair", '--loss_options={"margn": 1}'], "--loss_options: method npair has no option margn"),
    (["train", "--image_size=100000"], "--image_size=100000 is out of range: allowed >= 1 and <= 4096 (a 4096 x "
                                       "4096 x 3 float32 image takes 201 MB"),
    (["train", "--image_size=1e20"], "flag --image_size=1e20: invalid literal for int()"),
    (["train", "--max_image_pixels=1e20"], "flag --max_image_pixels=1e20: invalid literal for int()"),
    (["train", "--embedding_dim=1e20"], "flag --embedding_dim=1e20: invalid literal for int()"),
    (["train", "--backbone_width=1e20"], "flag --backbone_width=1e20: invalid literal for int()"),
    (["train", "--embedding_dim=100000000000000000000"], "--embedding_dim=100000000000000000000 is out of range"),
    (["train", "--plugins=no_such_module_xyz"], "--plugins: cannot import 'no_such_module_xyz'"),
    (["indx", "--milvus_uri=x"], "unknown command 'indx': usage: pddm-tf {"),
    (["train", "--epochs=abc"], "flag --epochs=abc: invalid literal for int()"),
    (["train", "--episodes=20way1shot,5wayoneshot"], "--episodes: few-shot setting '5wayoneshot' must read"),
    (["train", "--recipe=pddm_birds"], "--recipe=pddm_birds: unknown recipe 'pddm_birds'"),
    (["train", "--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    (["frobnicate"], "unknown command 'frobnicate': usage: pddm-tf {evaluate|export|index|search|train}"),
    (["evaluate", "--model_dir=/no/such/path"], "--model_dir=/no/such/path: no such path"),
])
def test_usage_errors_are_one_line_and_exit_code_2(run_cli, args, message):
    code, out, err = run_cli(*args)
    assert code == 2
    assert err == f"pddm-tf: error: {err.split('pddm-tf: error: ', 1)[-1]}" and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert out == ""  # refused before anything was loaded or printed


# --------------------------------------------------------------------------- evaluate and export inputs


def test_evaluate_and_export_recognise_what_they_were_given(tmp_path, run_cli):
    # A SavedModel that pddm-tf did not make.
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2.0}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "foreign"), signatures={"serving_default": module.f})
    with pytest.raises(ValueError, match=re.escape(f"not a pddm-tf export (no embed_pixels signature): "
                                                   f"{tmp_path / 'foreign'} has ['serving_default']")):
        export.load_saved_model(tmp_path / "foreign")
    # A corrupt saved_model.pb, reached through the base folder's latest version.
    (tmp_path / "base" / "3").mkdir(parents=True)
    (tmp_path / "base" / "3" / "saved_model.pb").write_bytes(b"\x00 not a protocol buffer \xff")
    (tmp_path / "base" / "1").mkdir()
    with pytest.raises(ValueError, match=re.escape(f"corrupt SavedModel at {tmp_path / 'base' / '3'}: ")):
        export.load_saved_model(tmp_path / "base")
    # A version folder without a SavedModel.
    (tmp_path / "base" / "4").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"no saved_model.pb in {tmp_path / 'base' / '4'}")):
        export.load_saved_model(tmp_path / "base")
    with pytest.raises(FileNotFoundError, match="holds neither a saved_model.pb nor version folders"):
        export.load_saved_model(tmp_path / "base" / "1")
    # Through the command: one line, exit code 1, no chained tracebacks.
    code, _, err = run_cli("evaluate", f"--model_dir={tmp_path / 'foreign'}")
    assert code == 1 and "not a pddm-tf export (no embed_pixels signature)" in err and "Traceback" not in err

    # export: a .keras file that is not a pddm-tf model, and one that is not a .keras archive.
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "plain.keras")
    with pytest.raises(ValueError, match="plain.keras is not a pddm-tf model \\(it holds a Functional\\)"):
        export.load_keras_model(tmp_path / "plain.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="cannot load the Keras model .*broken.keras"):
        export.load_keras_model(tmp_path / "broken.keras")
    code, _, err = run_cli("export", f"--keras_model={tmp_path / 'plain.keras'}", f"--export_dir={tmp_path / 'out'}")
    assert code == 1 and "is not a pddm-tf model" in err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- outputs outlive failures

# A tiny folder dataset (6 classes of 3 distinct images) and model: a training run takes ~2 s.
TINY = ["--method=contrastive", "--image_size=16", "--backbone_width=4", "--embedding_dim=8", "--batch_classes=2",
        "--batch_per_class=2", "--test_fraction=0.5", "--eval_batch_size=64", "--episodes="]


def _folder_dataset(root):
    rng = np.random.default_rng(0)
    for label in range(6):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            (root / f"class{label}" / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return f"--dataset=folder:{root}"


def _no_training(*args, **kwargs):
    raise AssertionError("fit was called: the rerun trained again")


def test_a_failed_or_interrupted_export_is_redone_without_training(tmp_path, run_cli, monkeypatch):
    backup = tmp_path / "backup"
    outputs = [f"--export_dir={tmp_path / 'export'}", f"--json={tmp_path / 'metrics.json'}",
               f"--save_model={tmp_path / 'model.keras'}"]
    args = ["train", _folder_dataset(tmp_path / "data"), *TINY, "--epochs=2", "--steps_per_epoch=2",
            f"--backup_dir={backup}", *outputs]
    real_export = export.export_saved_model

    # 1. Training completes, then the export fails: the trained state stays, and the message says so.
    def failing_export(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(export, "export_saved_model", failing_export)
    code, out, err = run_cli(*args)
    assert code == 1, err
    assert "trained 2 epochs" in out
    assert f"the trained model is kept in {backup}: run the same command again" in err
    status = backup_status(backup)
    assert status["complete"] and status["epoch"] == 2 and status["step"] == 4  # 2 epochs x 2 steps
    trained_metrics = json.loads((tmp_path / "metrics.json").read_text())
    trained_weights = tmp_path / "trained.weights.h5"  # the weights training ended with, before the backup goes
    shutil.copy(backup / f"backup-{status['epoch']}" / "model.weights.h5", trained_weights)
    assert not (tmp_path / "model.keras").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    # The .keras file is written after the export: the failure left it unwritten.

    # 2. Ctrl-C during the export of the rerun: one line, exit code 130, and still no training step.
    monkeypatch.setattr(keras.Model, "fit", _no_training)

    def interrupted_export(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_saved_model", interrupted_export)
    code, out, err = run_cli(*args)
    assert code == 130
    assert err == (f"pddm-tf: interrupted; run the same command again to write the outputs (training completed: "
                   f"2 epochs backed up in {backup})\n")
    assert "no training step" in out

    # 3. The same command again writes every output from the trained state, then deletes the backup.
    monkeypatch.setattr(export, "export_saved_model", real_export)
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "no training step" in out and "trained" not in out.replace("training had completed", "")
    assert not backup.exists()
    assert json.loads((tmp_path / "metrics.json").read_text()) == trained_metrics
    saved = keras.saving.load_model(tmp_path / "model.keras")
    reference = keras.saving.load_model(tmp_path / "model.keras")
    reference.load_weights(trained_weights)
    for got, want in zip(saved.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["1"]


def test_a_diverged_run_and_a_tensorflow_error_are_one_line(tmp_path, run_cli, monkeypatch):
    """issue 34 item 8: a loss that is not finite stops the run at the end of the epoch, naming the epoch
    and its steps, before that epoch is backed up; a TensorFlow error while exporting (a full disk) is one
    line saying where the trained model is kept."""
    from pddm_tf import MetricLossModel, TripletLoss
    from pddm_tf.methods.spec import MethodSpec, register_method

    def build(backbone, embedding_dim, settings):
        loss = TripletLoss(margin=0.2, miner="batch_hard")
        loss.margin = math.inf  # every triplet term max(0, d_ap - d_an + inf) is inf
        return MetricLossModel(backbone, loss, embedding_dim=embedding_dim)

    monkeypatch.setattr(METHOD_SPECS, "_entries", dict(METHOD_SPECS._entries))  # the table is restored after
    register_method(MethodSpec(name="test_diverging", summary="", build=build))
    dataset = _folder_dataset(tmp_path / "data")
    backup = tmp_path / "backup"
    code, out, err = run_cli("train", dataset, *TINY, "--method=test_diverging", "--epochs=2",
                             "--steps_per_epoch=3", f"--backup_dir={backup}")
    assert code == 1 and err.splitlines() == [
        "pddm-tf: error: training diverged: the loss is not finite in epoch 1 (steps 1-3); lower --learning_rate; "
        "no good state was backed up (it diverged in the first epoch)"], err
    assert backup_status(backup) is None  # the diverged epoch was not saved

    def full_disk(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(export, "export_saved_model", full_disk)
    code, out, err = run_cli("train", dataset, *TINY, "--epochs=1", "--steps_per_epoch=2", f"--backup_dir={backup}",
                             f"--export_dir={tmp_path / 'export'}")
    assert code == 1 and err.splitlines() == [
        f"pddm-tf: error: ResourceExhaustedError: No space left on device; the trained model is kept in {backup}: "
        "run the same command again to write the outputs without training"], err



def _full_disk_after(limit_bytes):
    """preexec_fn of a child whose every file stops growing past `limit_bytes` (EFBIG, as a full disk's ENOSPC)."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))
    return limit


def test_a_full_disk_under_the_backup_is_one_line_and_a_clean_exit(tmp_path):
    """issue 34 item 8: HDF5 writing the backup's weights onto a full disk used to end the process with
    SIGSEGV at exit (rc 139) after the message; the weights file is now built in memory, so the write fails
    as a plain OSError. Files stop growing at 8 KB in the child (the weights need ~30 KB): what a nearly full
    disk does to the first file larger than its free space."""
    backup = tmp_path / "backup"
    result = subprocess.run(
        [sys.executable, "-m", "pddm_tf.cli", "train", _folder_dataset(tmp_path / "data"), *TINY, "--epochs=2",
         "--steps_per_epoch=2", f"--backup_dir={backup}"],
        capture_output=True, text=True, timeout=300, preexec_fn=_full_disk_after(8192),
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("pddm-tf: error:")]
    assert len(errors) == 1 and f"cannot write the backup {backup / 'backup-1'}" in errors[0], result.stderr[-2000:]
    assert "File too large" in errors[0] and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not (backup / "backup-1").exists()  # the partial backup is removed, not left for a restore to read

# --------------------------------------------------------------------------- Ctrl-C and resuming


def _run_until(args, condition, sig, **environment):
    """Runs `pddm-tf <args>` in a fresh process (with `environment` added to this one's), sends it `sig`
    once `condition()` holds; (code, stdout, stderr)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **environment)
    # A child inherits its parent's ignored signals and signal mask, and Python leaves an inherited
    # SIG_IGN for SIGINT in place. A test runner's process may have either (in CI a pytest-xdist
    # worker's child ignored every SIGINT), so the child is started as a terminal would start it:
    # SIGINT at its default and nothing blocked, then `pddm-tf` is exec'ed.
    start = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
             "signal.pthread_sigmask(signal.SIG_SETMASK, []); "
             "os.execv(sys.executable, [sys.executable, '-m', 'pddm_tf.cli', *sys.argv[1:]])")
    process = subprocess.Popen([sys.executable, "-c", start, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not condition():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(sig)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


#: A --plugins module for the test below. With PDDM_TF_TEST_HOLD set, training waits after each
#: epoch's backup until a signal ends it: the Ctrl-C then arrives mid-training however fast the
#: machine (a tiny run can otherwise finish between the backup and the signal).
_HOLD_PLUGIN = """
import os, time
from pddm_tf.training import fault_tolerance

if os.environ.get("PDDM_TF_TEST_HOLD"):
    _save = fault_tolerance.BackupAndRestore._save

    def _save_then_hold(self, epochs_done, complete=False):
        _save(self, epochs_done, complete)
        if not complete:
            time.sleep(600)

    fault_tolerance.BackupAndRestore._save = _save_then_hold
"""


def test_ctrl_c_then_a_kill_during_the_export_then_the_outputs_without_training(tmp_path, run_cli, monkeypatch):
    """A real SIGINT during training (after the first backup): one line, exit code 130. The same
    command resumes, counts only the epochs it trains, and is killed (SIGKILL) during the export.
    The same command again writes every output with no training step."""
    backup, exported, plugins = tmp_path / "backup", tmp_path / "export", tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hold_after_backup.py").write_text(_HOLD_PLUGIN)
    monkeypatch.syspath_prepend(str(plugins))
    path = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
    args = ["train", _folder_dataset(tmp_path / "data"), *TINY, "--epochs=3", "--steps_per_epoch=12",
            f"--backup_dir={backup}", f"--export_dir={exported}", f"--save_model={tmp_path / 'model.keras'}",
            "--plugins=hold_after_backup"]

    code, out, err = _run_until(args, lambda: (backup / "latest").exists(), signal.SIGINT,  # epoch 2 began
                                PYTHONPATH=path, PDDM_TF_TEST_HOLD="1")
    assert code == 130, (out[-3000:], err[-3000:])
    status = backup_status(backup)
    assert status == {"epoch": 1, "step": 12, "steps_per_epoch": 12, "complete": False}
    done = status["epoch"]
    assert err.splitlines()[-1] == (f"pddm-tf: interrupted; run the same command again to resume from epoch "
                                    f"{done + 1} of 3 (backed up in {backup})")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err

    # Resumed; killed once the export has begun writing (its staging folder exists).
    code, out, err = _run_until(args, lambda: exported.is_dir() and any(exported.iterdir()), signal.SIGKILL,
                                PYTHONPATH=path)
    assert code == -signal.SIGKILL, err[-3000:]
    assert f"resumed from {backup / f'backup-{done}'} at epoch {done}" in out
    epochs, images = 3 - done, (3 - done) * 12 * 2 * 2
    line = re.search(r"^trained .*$", out, re.M).group(0)
    match = re.fullmatch(rf"trained {epochs} epochs? in ([\d.]+) s \((\d+) images/s\), resumed after epoch {done} "
                         r"\(3 epochs in all\)", line)
    assert match, line
    seconds, rate = float(match.group(1)), int(match.group(2))  # seconds printed to 0.1 s
    assert images / (seconds + 0.05) - 1 <= rate <= images / max(seconds - 0.05, 1e-3) + 1  # this run's only
    assert not (exported / "1").exists() and not (tmp_path / "model.keras").exists()
    assert backup_status(backup) == {"epoch": 3, "step": 36, "steps_per_epoch": 12, "complete": True}

    monkeypatch.setattr(keras.Model, "fit", _no_training)
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "no training step" in out
    assert (exported / "1" / "saved_model.pb").exists() and (tmp_path / "model.keras").exists()
    assert not backup.exists()


def test_json_written_atomically_leaves_no_temporary_file_when_it_fails(tmp_path):
    (tmp_path / "taken").mkdir()  # a folder where the file should go (what the checks refuse up front)
    with pytest.raises(IsADirectoryError):
        atomic.write_json(str(tmp_path / "taken"), {"recall@1": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and not any((tmp_path / "taken").iterdir())
    atomic.write_json(str(tmp_path / "m.json"), {"recall@1": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"recall@1": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "taken"]
