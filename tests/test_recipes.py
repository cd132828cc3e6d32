"""`pddm-tf train --recipe=NAME`: every recipe parses, applies its settings and trains a step on mock TFDS data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
import test_tfds_loaders
from absl import flags

from pddm_tf.backbones import BACKBONES
from pddm_tf.cli import settings
from pddm_tf.cli.commands import train as train_command
from pddm_tf.methods import METHODS, recipes
from pddm_tf.training import run as training_run

FLAGS = flags.FLAGS

# Mock splits: ten training classes of four images (enough for two Divide-and-Conquer clusters of
# 2 x 2 batches) and three held-out classes of three (Recall@8 needs 8 other images), on the right
# sides of each dataset's class boundary.
_TRAIN = [c for c in range(10) for _ in range(4)]
_LABELS = {
    ("caltech_birds2011", "train"): _TRAIN[:20] + [100, 100, 101],
    ("caltech_birds2011", "test"): _TRAIN[20:] + [101, 101, 102, 102, 102, 100],
    ("cars196", "train"): _TRAIN + [98, 98, 98, 99, 99, 99],
    ("cars196", "test"): [100, 100, 100],
    ("stanford_online_products", "train"): _TRAIN,
    ("stanford_online_products", "test"): [11318] * 3 + [11319] * 3 + [11320] * 3,
}
# Speed: the recipe's backbone is replaced by the small one (each named backbone is built and
# trained in test_backbones.py); everything else is the recipe's.
_FAST = ["--weights=none", "--backbone=small_convnet", "--backbone_width=8", "--image_size=32", "--epochs=1",
         "--steps_per_epoch=1", "--batch_classes=2", "--batch_per_class=2", "--eval_batch_size=8"]


@pytest.fixture
def mock_tfds(metadata_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(test_tfds_loaders, "LABELS", {**test_tfds_loaders.LABELS, **_LABELS})
    test_tfds_loaders._FAKE = test_tfds_loaders.FakeTFDS(cache_dir=str(tmp_path / "cache"))
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=metadata_dir,
                                as_dataset_fn=test_tfds_loaders._fake_as_dataset):
        yield metadata_dir
    test_tfds_loaders._FAKE = None


metadata_dir = test_tfds_loaders.metadata_dir


def _parse(*args):
    FLAGS.unparse_flags()
    FLAGS(["pddm-tf", "train", *args])
    settings.apply_recipe()


def test_every_recipe_names_known_settings():
    for recipe in recipes.RECIPES.values():
        assert set(recipe.flags) <= set(FLAGS), recipe.name
        assert recipe.flags["method"] in METHODS and recipe.flags["backbone"] in BACKBONES
        assert recipe.flags["embedding_dim"] % recipe.flags.get("num_learners", 1) == 0
        # Paper settings carry the paper's figures; the library's own recipes (omniglot) are measured here.
        assert recipe.choices and (recipe.reported or "this library" in recipe.paper), recipe.name
    with pytest.raises(ValueError, match="unknown recipe 'pddm_birds'; known recipes: dc_cars"):
        recipes.get_recipe("pddm_birds")
    table = recipes.recipes_table()
    assert all(f"`{name}`" in table for name in recipes.RECIPES)


def _parse_recipe(name, data_dir, cache_dir):
    recipe = recipes.get_recipe(name)
    fast = [*_FAST, "--num_learners=2"] if "num_learners" in recipe.flags else _FAST
    _parse(f"--recipe={name}", f"--data_dir={data_dir}", f"--cache_dir={cache_dir}", *fast)
    overridden = {arg[2:].split("=")[0] for arg in fast}
    for key, value in recipe.flags.items():
        if key not in overridden:
            assert FLAGS[key].value == (list(value) if isinstance(value, tuple) else value), key
    assert FLAGS.epochs == 1 and FLAGS.backbone == "small_convnet"  # the command line wins


_TFDS_RECIPES = sorted(n for n, r in recipes.RECIPES.items() if r.flags["dataset"] in ("cub200", "cars196", "sop"))


def test_omniglot_recipe_takes_a_folder_dataset_from_the_command_line(tmp_path):
    _parse("--recipe=omniglot", f"--dataset=folder:{tmp_path}", "--epochs=3")
    try:
        assert FLAGS.dataset == f"folder:{tmp_path}" and FLAGS.epochs == 3  # the command line wins
        assert FLAGS.rotations and FLAGS.affine and FLAGS.lr_schedule == "cosine" and FLAGS.image_size == 28
    finally:
        FLAGS.unparse_flags()


@pytest.mark.parametrize("name", _TFDS_RECIPES)
def test_recipe_parses_and_loads_its_dataset_from_mock_data(name, mock_tfds, tmp_path):
    _parse_recipe(name, mock_tfds, tmp_path / "files")
    try:
        split, channels = training_run.load_split(settings.train_config())
    finally:
        FLAGS.unparse_flags()
    dataset = recipes.get_recipe(name).flags["dataset"]
    first_test = {"cub200": 100, "cars196": 98, "sop": 11318}[dataset]
    raw = {"cub200": "caltech_birds2011", "cars196": "cars196", "sop": "stanford_online_products"}[dataset]
    every = [label for (builder, _), labels in _LABELS.items() if builder == raw for label in labels]
    # Independent recount: images per side from the mock labels and the dataset's class boundary.
    assert len(split.train) == sum(label < first_test for label in every)
    assert len(split.test) == sum(label >= first_test for label in every)
    assert channels == 3


# Training a step costs a model compile: one recipe per method family, covering the three datasets.
@pytest.mark.parametrize("name", ["pddm_cars", "hdml_sop", "dc_cub"])
def test_recipe_trains_one_step_on_mock_data(name, mock_tfds, tmp_path):
    _parse_recipe(name, mock_tfds, tmp_path / "files")
    try:
        metrics = train_command.run()
    finally:
        FLAGS.unparse_flags()
    assert 0.0 <= metrics["recall@1"] <= 1.0 and np.isfinite(metrics["map@r"])
