"""HDMLModel's settings groups (issue 30 items 3 and 7): `HardnessSchedule` and `SynthesisConfig` check
their values in one line and serialise; the previous release's flat keywords and attributes still work,
with a DeprecationWarning naming the new spelling; a config saved flat by the previous release loads."""

import contextlib
import dataclasses
import inspect
import json
import math
import re
import warnings
import zipfile

import keras
import numpy as np
import pytest

import pddm_tf
from pddm_tf import HardnessSchedule, HDMLModel, SynthesisConfig, small_convnet

SIZE = 16
#: Every keyword the previous release took flat: its group, class, and a value off the default.
OLD_KEYWORDS = {
    "alpha": ("hardness", HardnessSchedule, 90.0),
    "initial_easiness": ("hardness", HardnessSchedule, 0.25),
    "beta": ("hardness", HardnessSchedule, 5e3),
    "window": ("hardness", HardnessSchedule, 8),
    "initial_running_mean": ("hardness", HardnessSchedule, 100.0),
    "generator_input": ("synthesis", SynthesisConfig, "anchor_pair"),
    "generator_units": ("synthesis", SynthesisConfig, 32),
    "soft_weight": ("synthesis", SynthesisConfig, 0.2),
    "softmax_scale": ("synthesis", SynthesisConfig, 100.0),
    "generator_learning_rate": ("synthesis", SynthesisConfig, 0.05),
    "classifier_learning_rate": ("synthesis", SynthesisConfig, 0.02),
    "generator_weight_decay": ("synthesis", SynthesisConfig, 1e-3),
    "classifier_weight_decay": ("synthesis", SynthesisConfig, 2e-3),
}


def _net():
    return small_convnet(SIZE, 1, width=4, depth=2)


def _model(**kwargs):
    return HDMLModel(_net(), 8, num_classes=3, **kwargs)


@contextlib.contextmanager
def _no_hdml_warning():
    """Turns this library's HDML deprecation warnings into errors (not those of Keras or numpy)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="HDMLModel", category=DeprecationWarning)
        yield


def _observable(model):
    """What the settings decide in a built model, read from its parts: the generator's shapes, the
    extra optimisers' class, rate and decay, and the running-mean state's initial values."""
    model.build((None, SIZE, SIZE, 1))
    optimizers = [(type(o).__name__, float(o.learning_rate.numpy()), o.weight_decay)
                  for o in (model.generator_optimizer, model.classifier_optimizer)]
    state = [v.numpy().tolist() for v in (model.running_means, model.block_sums, model.block_steps,
                                          model.alpha_in_use)]
    return [tuple(w.shape) for w in model.generator.weights], optimizers, state


def test_the_constructor_takes_about_ten_parameters_of_its_own():
    own = [name for name in inspect.signature(HDMLModel.__init__).parameters
           if name not in ("self", "backbone", "embedding_dim", "dropout", "kwargs")]
    assert len(own) <= 11, own
    assert {"hardness", "synthesis"} <= set(own) and not set(OLD_KEYWORDS) & set(own)
    # Each moved keyword is a field of its group, under the same name.
    for name, (_, kind, _) in OLD_KEYWORDS.items():
        assert name in {field.name for field in dataclasses.fields(kind)}, name
    assert {f.name for f in dataclasses.fields(HardnessSchedule)} | {f.name for f in dataclasses.fields(
        SynthesisConfig)} == set(OLD_KEYWORDS)
    assert pddm_tf.HardnessSchedule is HardnessSchedule and "SynthesisConfig" in pddm_tf.__all__


@pytest.mark.parametrize("name", sorted(OLD_KEYWORDS))
def test_each_old_keyword_warns_and_builds_the_same_model(name):
    group, kind, value = OLD_KEYWORDS[name]
    with pytest.warns(DeprecationWarning) as caught:
        old = _model(**{name: value})
    message = str(caught[0].message)
    assert f"{group}={kind.__name__}({name}={value!r})" in message and name in message.split(":")[0]
    assert caught[0].filename == __file__  # points at the caller's line
    new = _model(**{group: kind(**{name: value})})
    assert getattr(old, group) == getattr(new, group) and getattr(getattr(old, group), name) == value
    other = "synthesis" if group == "hardness" else "hardness"
    assert getattr(old, other) == type(getattr(old, other))()  # the other group keeps its defaults
    with _no_hdml_warning():
        assert _observable(old) == _observable(new)
    # The flat attribute of the previous release: the same value, with a warning naming the new one.
    with pytest.warns(DeprecationWarning, match=rf"HDMLModel\.{name} is deprecated: use model\.{group}\.{name}"):
        assert getattr(old, name) == value
    assert name not in dir(old)


def test_other_unknown_attributes_are_still_attribute_errors():
    model = _model()
    with pytest.raises(AttributeError, match=r"^'HDMLModel' object has no attribute 'bta'$"):
        model.bta  # noqa: B018
    assert not hasattr(model, "generator_unit")


@pytest.mark.parametrize("name", sorted(OLD_KEYWORDS))
def test_setting_an_old_attribute_is_refused_not_ignored(name):
    # The train step reads the groups: a value stored under the old name would change nothing.
    model = _model()
    group = OLD_KEYWORDS[name][0]
    before = getattr(model, group)
    with pytest.raises(AttributeError, match=rf"^HDMLModel\.{name} cannot be set: it is {group}\.{name}; build the "
                                             rf"model with {group}=\w+\({name}=\.\.\.\)$"):
        setattr(model, name, OLD_KEYWORDS[name][2])
    assert getattr(model, group) is before and name not in vars(model)


def test_the_old_keywords_reach_the_model_parts():
    """Values checked against what each setting is meant to do, not against the new spelling alone."""
    with pytest.warns(DeprecationWarning):
        model = _model(alpha=90.0, initial_running_mean=100.0, generator_units=32, generator_input="anchor_pair",
                       generator_learning_rate=0.05, classifier_weight_decay=2e-3)
    shapes, optimizers, state = _observable(model)
    assert shapes[0] == (2 * 8, 32)  # [anchor; sample] pairs of 8-d embeddings into 32 hidden units
    assert optimizers[0] == ("Adam", pytest.approx(0.05), None)
    assert optimizers[1] == ("AdamW", pytest.approx(1e-3), pytest.approx(2e-3))
    assert state == [[100.0, 100.0], [0.0, 0.0], 0.0, 90.0]


def test_old_keywords_of_both_groups_warn_once_with_the_whole_new_spelling():
    with pytest.warns(DeprecationWarning) as caught:
        _model(alpha=90.0, generator_units=256, beta=5e3)
    assert len(caught) == 1
    assert str(caught[0].message) == ("HDMLModel(alpha=..., generator_units=..., beta=...) is deprecated: use "
                                      "HDMLModel(hardness=HardnessSchedule(alpha=90.0, beta=5000.0), "
                                      "synthesis=SynthesisConfig(generator_units=256))")


@pytest.mark.parametrize("name", ["alpha", "generator_units"])
def test_an_old_keyword_and_its_group_together_are_refused(name):
    group, kind, value = OLD_KEYWORDS[name]
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError) as error:
        _model(**{name: value, group: kind()})
    assert str(error.value) == f"pass {group}={kind.__name__}(...) or the deprecated {name}=..., not both"


def test_a_group_of_the_wrong_type_is_refused():
    with pytest.raises(TypeError, match=r"^HDMLModel\(hardness=\.\.\.\) takes a HardnessSchedule, got "
                                        r"SynthesisConfig$"):
        _model(hardness=SynthesisConfig())


BAD_VALUES = [
    (HardnessSchedule, "alpha", -1.0), (HardnessSchedule, "alpha", math.nan),
    (HardnessSchedule, "initial_easiness", 0.0), (HardnessSchedule, "initial_easiness", 1.0),
    (HardnessSchedule, "beta", -5.0), (HardnessSchedule, "window", 0), (HardnessSchedule, "window", 2.5),
    (HardnessSchedule, "initial_running_mean", 0.0),
    (SynthesisConfig, "generator_input", "pairs"), (SynthesisConfig, "generator_units", 0),
    (SynthesisConfig, "soft_weight", 1.5), (SynthesisConfig, "softmax_scale", -1.0),
    (SynthesisConfig, "generator_learning_rate", 0.0), (SynthesisConfig, "classifier_learning_rate", -1e-3),
    (SynthesisConfig, "generator_weight_decay", -1e-4), (SynthesisConfig, "classifier_weight_decay", math.nan),
    # Infinite rates and scales train to NaN.
    (HardnessSchedule, "beta", math.inf), (HardnessSchedule, "initial_running_mean", math.inf),
    (SynthesisConfig, "softmax_scale", math.inf), (SynthesisConfig, "generator_learning_rate", math.inf),
    (SynthesisConfig, "classifier_weight_decay", math.inf),
]


@pytest.mark.parametrize("kind, name, value", BAD_VALUES, ids=[f"{n}={v}" for _, n, v in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_it(kind, name, value):
    with pytest.raises(ValueError) as error:
        kind(**{name: value})
    message = str(error.value)
    assert "\n" not in message and message.count(name) == 1 and (repr(value) in message or str(value) in message)
    # The deprecated keyword reaches the same check.
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _model(**{name: value})


@pytest.mark.parametrize("kind, name, value", [(HardnessSchedule, "beta", "1e4"), (HardnessSchedule, "window", True),
                                               (SynthesisConfig, "soft_weight", None)])
def test_a_value_that_is_not_a_number_is_one_line_naming_it(kind, name, value):
    with pytest.raises(TypeError, match=rf"^{name} must be a number, got {re.escape(repr(value))}$"):
        kind(**{name: value})


def test_groups_are_frozen_values_that_serialise():
    hardness, synthesis = HardnessSchedule(alpha=90, window=8.0), SynthesisConfig(generator_units=np.int64(32))
    assert (type(hardness.alpha), type(hardness.window), type(synthesis.generator_units)) == (float, int, int)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hardness.alpha = 1.0  # type: ignore[misc]
    for group in (hardness, synthesis):
        serialised = json.loads(json.dumps(keras.saving.serialize_keras_object(group)))
        assert serialised["registered_name"] == f"pddm_tf>{type(group).__name__}"
        assert keras.saving.deserialize_keras_object(serialised) == group
        assert type(group).from_config(group.get_config()) == group


def test_get_config_is_nested_and_round_trips():
    model = _model(hardness=HardnessSchedule(alpha=90.0, window=8), synthesis=SynthesisConfig(generator_units=32),
                   base="triplet", triplet_margin=0.3)
    config = json.loads(json.dumps(model.get_config()))
    assert not set(OLD_KEYWORDS) & set(config)
    assert config["hardness"]["config"]["alpha"] == 90.0 and config["synthesis"]["config"]["generator_units"] == 32
    with _no_hdml_warning():
        copy = HDMLModel.from_config(config)
    assert (copy.hardness, copy.synthesis) == (model.hardness, model.synthesis)
    assert (copy.base, copy.triplet_margin) == ("triplet", 0.3)


def _flat_config(model):
    """`model`'s config as the previous release wrote it: every setting at the top level."""
    config = json.loads(json.dumps(model.get_config()))
    del config["hardness"], config["synthesis"]
    config.update({name: value for name, (_, _, value) in OLD_KEYWORDS.items()})
    return config


def _expected():
    values = {name: value for name, (_, _, value) in OLD_KEYWORDS.items()}
    return (HardnessSchedule(**{n: values[n] for n in ("alpha", "initial_easiness", "beta", "window",
                                                        "initial_running_mean")}),
            SynthesisConfig(**{n: v for n, v in values.items() if OLD_KEYWORDS[n][0] == "synthesis"}))


def test_a_flat_config_of_the_previous_release_loads_silently():
    config = _flat_config(_model())
    with _no_hdml_warning():  # whoever loads a file did not write its spelling
        model = HDMLModel.from_config(config)
    assert (model.hardness, model.synthesis) == _expected()
    assert model.hardness.alpha == 90.0 and model.synthesis.classifier_weight_decay == 2e-3
    # Part of them flat (a release older still lacked some): the others keep their defaults.
    config = json.loads(json.dumps(_model().get_config()))
    del config["hardness"], config["synthesis"]
    config["beta"] = 5e3
    model = HDMLModel.from_config(config)
    assert model.hardness == HardnessSchedule(beta=5e3) and model.synthesis == SynthesisConfig()


def test_a_keras_file_saved_flat_by_the_previous_release_loads(tmp_path):
    """A .keras archive whose config.json holds the flat settings (as the previous release saved it)
    loads with those settings and its weights."""
    keras.utils.set_random_seed(0)
    hardness, synthesis = _expected()
    model = _model(hardness=hardness, synthesis=synthesis)
    model.build((None, SIZE, SIZE, 1))
    saved = tmp_path / "new.keras"
    with _no_hdml_warning():  # Keras' saving reads every name of dir(model): no deprecated one is there
        model.save(saved)
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                document = json.loads(data)
                document["config"] = _flat_config(model)
                data = json.dumps(document).encode()
            target.writestr(item, data)
    with _no_hdml_warning():
        loaded = keras.models.load_model(old, compile=False)
    assert isinstance(loaded, HDMLModel) and (loaded.hardness, loaded.synthesis) == (hardness, synthesis)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
