"""Settings whose default depends on the dataset (issue 32): omniglot's batch_classes, rotations and affine
default to what the 4-fold protocol measured best for characters, every other dataset keeps 16, off, off."""

import pytest

from pddm_tf import data
from pddm_tf.options import ConfigError
from pddm_tf.training import TrainConfig
from pddm_tf.training.config import DATASET_DEFAULTS
from pddm_tf.training.run import load_split, training_transform


def _resolved(config: TrainConfig) -> tuple:
    c = config.resolved()
    return c.optimization.batch.classes, c.data.images.rotations, c.data.images.affine


@pytest.mark.parametrize("dataset, expected", [
    ("omniglot", (32, True, True)), ("tfds_omniglot", (32, True, True)),
    ("folder:/data/birds", (16, False, False)), ("cub200", (16, False, False)), ("sop", (16, False, False))])
def test_unset_settings_take_their_dataset_default(dataset, expected):
    config = TrainConfig.from_flags(dataset=dataset)
    assert (config.optimization.batch.classes, config.data.images.rotations, config.data.images.affine) == (
        None, None, None)
    assert _resolved(config) == expected
    column = 0 if "omniglot" in dataset else 1
    assert config.dataset_defaults() == {flag: values[column] for flag, values in DATASET_DEFAULTS.items()}


def test_set_values_are_kept_and_resolving_twice_changes_nothing():
    config = TrainConfig.from_flags(batch_classes=8, rotations=False)
    assert _resolved(config) == (8, False, True)
    assert config.dataset_defaults() == {"affine": True}
    assert config.resolved().resolved() == config.resolved()
    # The dataset is read when resolving, not when the config is made: a later --dataset is honoured.
    assert _resolved(TrainConfig().with_flags(dataset="folder:/data/birds")) == (16, False, False)


def test_augment_turns_the_character_distortions_off_unless_asked_for():
    assert _resolved(TrainConfig.from_flags(augment=True)) == (32, True, False)
    TrainConfig.from_flags(augment=True).check()
    with pytest.raises(ConfigError, match="--augment and --affine"):
        TrainConfig.from_flags(augment=True, affine=True).check()


def test_the_checks_see_the_resolved_batch():
    # --xbm must hold a batch: 32 x 4 = 128 images on omniglot by default, 16 x 4 = 64 elsewhere.
    with pytest.raises(ConfigError, match=r"smaller than a batch \(32 x 4"):
        TrainConfig.from_flags(method="contrastive", xbm=100).check()
    TrainConfig.from_flags(method="contrastive", xbm=100, batch_classes=16).check()


def test_the_training_split_and_transform_follow_the_defaults():
    plain = TrainConfig.from_flags(rotations=False, affine=False)
    split, channels = load_split(TrainConfig())
    upright, _ = load_split(plain)
    reference = data.load_dataset("omniglot", test_fraction=0.5, seed=0, split_by="character")
    assert channels == 1 and upright.train.num_classes == reference.train.num_classes
    assert split.train.num_classes == 4 * reference.train.num_classes
    assert sorted(set(split.train.rotations.tolist())) == [0, 1, 2, 3]
    assert training_transform(TrainConfig()) is not None and training_transform(plain) is None
