"""`TrainConfig`'s groups split into sub-groups of at most ten fields (issue 30 item 3), with the flag
names, `flag_values()`, `run_key()` and the previous release's flat spellings unchanged (item 7)."""

import dataclasses
import inspect
import re
import warnings

import pytest

from pddm_tf import PDDMDeprecationWarning
from pddm_tf._setting_groups import get, subgroups
from pddm_tf.cli import settings
from pddm_tf.methods.catalog import METHOD_SPECS
from pddm_tf.methods.spec import check_method_config
from pddm_tf.options import ConfigError
from pddm_tf.training import (
    BatchConfig,
    DataConfig,
    DistributionConfig,
    DivideAndConquerConfig,
    EvaluationConfig,
    HDMLConfig,
    ImageConfig,
    MethodConfig,
    OptimizationConfig,
    OutputConfig,
    PDDMConfig,
    RunConfig,
    TFDSConfig,
    TrainConfig,
)
from pddm_tf.training.config import FLAGS, GROUPS

#: Issue 30: "No public constructor takes more than about 10 parameters: group them in small config
#: objects". A config class's constructor takes exactly its fields, so none may have more than this.
MAX_FIELDS = 10

#: The `pddm-tf train` flags of the release before the sub-groups, in their order then (recorded from main's
#: `list(FLAGS)` before the change): users' command lines, recipes and `from_flags` calls use these names.
_FLAGS_BEFORE = [
    "dataset", "data_dir", "cache_dir", "download", "manual_dir", "test_fraction", "split_by", "test_groups",
    "rotations", "image_size", "augment", "affine", "small_classes", "channels", "max_image_pixels", "backbone",
    "weights", "pooling", "backbone_width", "freeze_batchnorm", "embedding_dim", "dropout", "mixed_precision",
    "method", "loss_options", "mining", "mining_score", "pddm_normalize_inputs", "alpha", "beta", "embedding_weight",
    "hdml_alpha", "hdml_beta", "hdml_generator_input", "hdml_synthetic", "num_learners", "recluster_every",
    "conquer_epochs", "cluster_on", "rerank", "xbm", "epochs", "steps_per_epoch", "batch_classes", "batch_per_class",
    "learning_rate", "weight_decay", "weight_decay_mode", "lr_schedule", "warmup_fraction", "ema_momentum",
    "jit_compile", "seed", "json", "eval_batch_size", "episodes", "num_episodes", "eval_every", "export_dir",
    "save_model", "log_dir", "backup", "backup_dir", "strict", "progress", "strategy", "worker_hosts", "task_index",
    "communication"]

#: Flags of every group and sub-group, away from their defaults.
_FIXED = dict(dataset="omniglot", data_dir="/data/tfds", cache_dir="/data/cache", download=True,
              manual_dir="/data/manual", image_size=28, channels=1, rotations=True, affine=True,
              max_image_pixels=1_000_000, test_fraction=0.25, backbone_width=32, embedding_dim=32, epochs=3,
              steps_per_epoch=50, batch_classes=8, batch_per_class=2, method="hdml_triplet", hdml_alpha=45.0,
              hdml_beta=5000.0, hdml_generator_input="anchor_pair", hdml_synthetic=False, seed=7, json="/tmp/m.json",
              eval_batch_size=64, episodes=["5way1shot"], num_episodes=10, export_dir="/tmp/export",
              backup_dir="/tmp/b", strategy="mirrored", loss_options={"margin": 0.3})
_DC = dict(method="dc_pddm", num_learners=2, recluster_every=1, conquer_epochs=0, cluster_on="embeddings",
           mining="hardest", alpha=0.5, beta=1.0, embedding_weight=0.2, pddm_normalize_inputs=True, rerank=10)

#: omniglot's batch_classes, rotations and affine before they depended on the dataset.
_PLAIN = dict(batch_classes=16, rotations=False, affine=False)


def _config_classes() -> list[type]:
    found, stack = [], list(GROUPS.values())
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(subgroups(cls).values())
    return found


def test_no_config_class_has_more_than_ten_fields():
    classes = _config_classes()
    assert {cls.__name__ for cls in classes} == {
        "DataConfig", "TFDSConfig", "ImageConfig", "ModelConfig", "MethodConfig", "PDDMConfig", "HDMLConfig",
        "DivideAndConquerConfig", "OptimizationConfig", "BatchConfig", "RunConfig", "EvaluationConfig",
        "OutputConfig", "DistributionConfig"}  # the walk reaches every sub-group
    for cls in classes:
        fields = dataclasses.fields(cls)
        assert len(fields) <= MAX_FIELDS, f"{cls.__name__} has {len(fields)} fields: group some in a sub-group"
        assert list(inspect.signature(cls).parameters) == [field.name for field in fields], cls.__name__


def test_the_flag_names_are_those_of_the_previous_release():
    assert list(FLAGS) == _FLAGS_BEFORE[:8] + ["small_classes", "image_size", "channels", "max_image_pixels",
                                               "rotations", "augment", "affine"] + _FLAGS_BEFORE[15:]
    assert sorted(TrainConfig.field_names()) == sorted(_FLAGS_BEFORE)
    # FLAGS reaches into the sub-groups: group, dotted path in it, Setting.
    assert FLAGS["json"][:2] == ("run", "evaluation.json")
    assert FLAGS["hdml_alpha"][:2] == ("method", "hdml.alpha")
    assert FLAGS["image_size"][:2] == ("data", "images.size")
    assert FLAGS["batch_per_class"][:2] == ("optimization", "batch.per_class")
    assert FLAGS["seed"][:2] == ("run", "seed")


def test_run_key_is_the_digest_of_the_previous_release():
    """Backups of users' runs are found by this digest: the same flags must give the same one."""
    # Recorded by running main's TrainConfig.from_flags(...).run_key() before the sub-groups (commit 51a36e9).
    assert TrainConfig.from_flags(_FIXED).run_key() == "228d92d6549f7fc6"
    # The previous release's defaults: its default method was pddm_quadruplet (margin since issue 32), and
    # omniglot's batch_classes, rotations and affine were 16, off, off (dataset-dependent since issue 32).
    assert TrainConfig.from_flags(_DC, **_PLAIN).run_key() == "d42b7625380fdb1b"
    assert TrainConfig.from_flags(method="pddm_quadruplet", **_PLAIN).run_key() == "95ec7b801860c3da"
    # On omniglot those three now default to 32, on, on: a run of other settings, so another backup folder;
    # elsewhere they default to the values of the previous release, and so does the digest.
    assert TrainConfig.from_flags(_DC).run_key() != "d42b7625380fdb1b"
    folder = dict(_DC, dataset="folder:/data/birds")
    assert TrainConfig.from_flags(folder).run_key() == TrainConfig.from_flags(folder, **_PLAIN).run_key()


def test_flag_values_stay_flat_and_round_trip():
    config = TrainConfig.from_flags(_FIXED)
    values = config.flag_values()
    assert sorted(values) == sorted(_FLAGS_BEFORE)
    assert values["loss_options"] == '{"margin": 0.3}'
    for flag, given in _FIXED.items():
        if flag != "loss_options":
            assert values[flag] == given, flag
    assert values["small_classes"] == "error" and values["cluster_on"] is None  # unset: defaults
    assert TrainConfig.from_flags(values) == config
    # The nested values are where the flags say.
    assert (config.run.evaluation.json, config.data.tfds.data_dir, config.data.images.size) == ("/tmp/m.json",
                                                                                              "/data/tfds", 28)
    assert (config.method.hdml.alpha, config.optimization.batch.classes, config.run.distribution.strategy) == (
        45.0, 8, "mirrored")


def test_the_command_line_fills_the_sub_groups():
    config = settings.train_config({"method": "hdml_triplet", "hdml_alpha": 3.0, "json": "m.json",
                                    "eval_every": 2, "batch_per_class": 3, "manual_dir": "/m"})
    assert config.method.hdml == HDMLConfig(alpha=3.0)
    assert config.run.evaluation == EvaluationConfig(json="m.json", every=2)
    assert config.optimization.batch == BatchConfig(per_class=3)
    assert config.data.tfds == TFDSConfig(manual_dir="/m")


def test_method_flags_are_read_from_the_sub_groups():
    config = TrainConfig.from_flags(method="hdml_triplet", hdml_alpha=45.0)
    spec = METHOD_SPECS["hdml_triplet"]
    values = spec.settings(config.method)
    assert values["hdml_alpha"] == 45.0
    assert values["hdml_beta"] == spec.flags["hdml_beta"]  # unset: the method's default
    with pytest.raises(ConfigError, match=r"--hdml_alpha=45.0 is not used by --method=triplet_batchhard; it applies "
                                          r"to .*hdml_triplet"):
        check_method_config(config.with_flags(method="triplet_batchhard").method)
    with pytest.raises(ConfigError, match=r"--num_learners=0 is out of range"):
        check_method_config(MethodConfig(name="dc_margin", dc=DivideAndConquerConfig(num_learners=0)))


#: (class, flat field of the previous release, a value, the new nested construction, the new path).
_MOVED = [
    (DataConfig, "data_dir", "/d", lambda v: DataConfig(tfds=TFDSConfig(data_dir=v)), "tfds.data_dir"),
    (DataConfig, "image_size", 28, lambda v: DataConfig(images=ImageConfig(size=v)), "images.size"),
    (MethodConfig, "hdml_alpha", 45.0, lambda v: MethodConfig(hdml=HDMLConfig(alpha=v)), "hdml.alpha"),
    (MethodConfig, "pddm_normalize_inputs", True, lambda v: MethodConfig(pddm=PDDMConfig(normalize_inputs=v)),
     "pddm.normalize_inputs"),
    (MethodConfig, "num_learners", 2, lambda v: MethodConfig(dc=DivideAndConquerConfig(num_learners=v)),
     "dc.num_learners"),
    (OptimizationConfig, "batch_classes", 8, lambda v: OptimizationConfig(batch=BatchConfig(classes=v)),
     "batch.classes"),
    (RunConfig, "json", "m.json", lambda v: RunConfig(evaluation=EvaluationConfig(json=v)), "evaluation.json"),
    (RunConfig, "backup_dir", "/b", lambda v: RunConfig(outputs=OutputConfig(backup_dir=v)), "outputs.backup_dir"),
    (RunConfig, "strategy", "mirrored", lambda v: RunConfig(distribution=DistributionConfig(strategy=v)),
     "distribution.strategy"),
]
_GROUP_OF = {DataConfig: "data", MethodConfig: "method", OptimizationConfig: "optimization", RunConfig: "run"}


@pytest.mark.parametrize("cls,old,value,new,path", _MOVED, ids=[row[1] for row in _MOVED])
def test_a_flat_constructor_keyword_of_the_last_release_warns_and_still_works(cls, old, value, new, path):
    head, _, field = path.partition(".")
    sub = subgroups(cls)[head].__name__
    expected = f"{cls.__name__}({old}=...) is deprecated: use {cls.__name__}({head}={sub}({field}=...))"
    with pytest.warns(PDDMDeprecationWarning, match=re.escape(expected)) as record:
        made = cls(**{old: value})
    assert record[0].filename == __file__  # attributed to the user's line
    assert made == new(value)


@pytest.mark.parametrize("cls,old,value,new,path", _MOVED, ids=[row[1] for row in _MOVED])
def test_a_flat_attribute_of_the_last_release_warns_and_still_reads(cls, old, value, new, path):
    where = f"config.{_GROUP_OF[cls]}"
    with pytest.warns(PDDMDeprecationWarning, match=re.escape(f"{where}.{old} is deprecated: use {where}.{path}")):
        assert getattr(new(value), old) == value
    with pytest.raises(AttributeError, match="no attribute 'no_such_setting'"):
        new(value).no_such_setting  # noqa: B018 (the read is the test)


def test_dataclasses_replace_with_a_flat_name_changes_only_that_field():
    run = RunConfig(seed=3, evaluation=EvaluationConfig(num_episodes=5))
    with pytest.warns(PDDMDeprecationWarning, match=re.escape("RunConfig(json=...) is deprecated")) as record:
        changed = dataclasses.replace(run, json="m.json")
    assert record[0].filename == __file__  # past dataclasses.replace, to the user's line
    assert changed == RunConfig(seed=3, evaluation=EvaluationConfig(num_episodes=5, json="m.json"))
    with pytest.warns(PDDMDeprecationWarning, match=re.escape("MethodConfig(hdml_alpha=..., num_learners=...) is "
                                                              "deprecated: use MethodConfig(hdml=HDMLConfig(alpha="
                                                              "...), dc=DivideAndConquerConfig(num_learners=...))")):
        method = MethodConfig(name="dc_margin", hdml_alpha=2.0, num_learners=3)
    assert method == MethodConfig(name="dc_margin", hdml=HDMLConfig(alpha=2.0),
                                  dc=DivideAndConquerConfig(num_learners=3))


def test_train_config_flat_names_name_the_nested_spelling():
    with pytest.warns(PDDMDeprecationWarning, match=re.escape(
            "use TrainConfig.from_flags(json=..., hdml_alpha=...) or TrainConfig(run=RunConfig(evaluation="
            "EvaluationConfig(json=...)), method=MethodConfig(hdml=HDMLConfig(alpha=...)))")):
        config = TrainConfig(json="m.json", hdml_alpha=2.0)
    assert config == TrainConfig.from_flags(json="m.json", hdml_alpha=2.0)
    with pytest.warns(PDDMDeprecationWarning, match=re.escape("TrainConfig.hdml_alpha is deprecated: use "
                                                              "config.method.hdml.alpha")):
        assert config.hdml_alpha == 2.0


def test_the_new_spellings_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = TrainConfig.from_flags(_FIXED).with_flags(eval_every=1, cluster_on="features")
        for group, path, _ in FLAGS.values():
            get(getattr(config, group), path)
        run = dataclasses.replace(config.run, outputs=OutputConfig(backup=False))
        assert run.outputs.backup is False and run.evaluation.every == 1
        TrainConfig(data=DataConfig(images=ImageConfig(size=28)), run=run).check()
