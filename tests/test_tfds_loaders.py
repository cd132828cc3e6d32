"""Tests of pddm_tf.data.tfds_loaders under tfds.testing.mock_data (no download, no real data).

The fake TFDS splits are generated here (labels chosen per split, other features random), so
every expected split, label, class name and image is recomputed from them independently of the
loaders. TFDS sees metadata files written from each builder's own info (`MockPolicy.USE_FILES`),
which is what makes `builder.is_prepared()` true, and reads examples from `_fake_as_dataset`,
which encodes them with the real feature connectors and decodes them with the loader's decoders
(so `SkipDecoding` yields real PNG / JPEG bytes).
"""

import dataclasses
import functools
import os
import pathlib
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from pddm_tf import data
from pddm_tf.data import tfds_loaders

SIDE = 10  # RandomFakeGenerator(constant_dynamic_shape=True) gives 10 x 10 images.
BUILDERS = ("caltech_birds2011", "cars196", "stanford_online_products", "omniglot", "imagenet2012")

# TFDS labels of the fake examples of each (builder, split); the class boundaries are on purpose.
LABELS = {
    ("caltech_birds2011", "train"): [0, 99, 100, 3, 199, 0, 150],
    ("caltech_birds2011", "test"): [99, 100, 42, 3, 199],
    ("cars196", "train"): [97, 98, 0, 195, 97],
    ("cars196", "test"): [98, 12, 0],
    ("stanford_online_products", "train"): [0, 11317, 5, 5],
    ("stanford_online_products", "test"): [11318, 22633, 11318],
    ("omniglot", "train"): [0, 963, 0],
    ("omniglot", "test"): [964, 1622],
    ("imagenet2012", "train"): list(range(0, 1000, 50)) * 2,
    ("imagenet2012", "validation"): list(range(0, 1000, 50)),
}


@dataclasses.dataclass
class FakeTFDS:
    """State shared by the fake `_as_dataset` and a test."""

    cache_dir: str
    calls: list = dataclasses.field(default_factory=list)  # (builder name, split) per as_dataset
    fail_after: int | None = None  # Raise after yielding this many examples (an interruption).


_FAKE: FakeTFDS | None = None


def _examples(name: str, split: str, features=None) -> list[dict]:
    """The decoded fake examples of a split: random features, labels from LABELS."""
    features = features or tfds.builder(name).info.features
    labels = LABELS[(name, split)]
    label_key = "class_id" if name == "stanford_online_products" else "label"
    generator = mocking.RandomFakeGenerator(
        features, len(labels), constant_dynamic_shape=True, seed=zlib.crc32(f"{name}/{split}".encode())
    )
    examples = list(generator)
    for example, label in zip(examples, labels):
        example[label_key] = np.int64(label)
    return examples


def _fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """Replaces `FileReaderBuilder._as_dataset`: the split's fake examples, encoded then decoded."""
    del read_config, shuffle_files
    _FAKE.calls.append((self.name, str(split)))
    # Runs inside mock_data's fake file system: no new builder here, reuse this one's features.
    examples = _examples(self.name, str(split), self.info.features)
    features = self.info.features
    if isinstance(decoders, tfds.decode.PartialDecoding):
        features = decoders.extract_features(features)
        decoders = decoders.decoders
    encoded = [features.encode_example({k: ex[k] for k in features}) for ex in examples]
    fail_after = _FAKE.fail_after

    def generate():
        for i, example in enumerate(encoded):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("interrupted")
            yield example

    signature = tf.nest.map_structure(lambda s: tf.TensorSpec(s.shape, s.tf_dtype), features.get_serialized_info())
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset.map(functools.partial(features.decode_example, decoders=decoders))


@pytest.fixture(scope="module")
def metadata_dir(tmp_path_factory) -> str:
    """A TFDS data_dir holding every builder's metadata (dataset_info.json, features.json)."""
    root = tmp_path_factory.mktemp("tfds")
    for name in BUILDERS:
        builder = tfds.builder(name, data_dir=str(root))
        builder.data_path.mkdir(parents=True)
        builder.info.write_to_directory(builder.data_path)
    return str(root)


@pytest.fixture
def fake(metadata_dir, tmp_path):
    global _FAKE
    _FAKE = FakeTFDS(cache_dir=str(tmp_path / "cache"))
    with tfds.testing.mock_data(
        policy=tfds.testing.MockPolicy.USE_FILES, data_dir=metadata_dir, as_dataset_fn=_fake_as_dataset
    ):
        yield _FAKE
    _FAKE = None


def _rows(name: str, splits: tuple[str, ...]) -> list[tuple[str, int, dict]]:
    """(split, TFDS label, example) of every fake example, in split order then TFDS order."""
    label_key = "class_id" if name == "stanford_online_products" else "label"
    return [(s, int(ex[label_key]), ex) for s in splits for ex in _examples(name, s)]


def _check_files(files: data.ImageFiles, rows: list[tuple[str, int, dict]], names: dict[int, str], name: str):
    """`files` holds exactly `rows`, in order, relabelled by increasing TFDS label, with their images."""
    classes = sorted({label for _, label, _ in rows})
    assert files.class_names == tuple(names[c] for c in classes)
    np.testing.assert_array_equal(files.labels, [classes.index(label) for _, label, _ in rows])
    np.testing.assert_array_equal(files.rotations, 0)
    image_feature = tfds.builder(name).info.features["image"]
    for path, (_, _, example) in zip(files.paths, rows, strict=True):
        assert pathlib.Path(path).read_bytes() == image_feature.encode_example(example["image"])


# --------------------------------------------------------------------------- class splits


@pytest.mark.parametrize(
    "name, loader, first_test", [("cub200", tfds_loaders.load_cub200, 100), ("cars196", tfds_loaders.load_cars196, 98)]
)
def test_image_split_datasets_are_re_split_by_label(fake, name, loader, first_test):
    tfds_name = {"cub200": "caltech_birds2011", "cars196": "cars196"}[name]
    split = loader(cache_dir=fake.cache_dir)
    rows = _rows(tfds_name, ("train", "test"))
    if name == "cub200":  # "<1-based id>.<label_name of the first example of the class>"
        names = {}
        for _, label, example in rows:
            names.setdefault(label, f"{label + 1:03d}.{example['label_name']}")
    else:
        names = dict(enumerate(tfds.builder("cars196").info.features["label"].names))
    _check_files(split.train, [r for r in rows if r[1] < first_test], names, tfds_name)
    _check_files(split.test, [r for r in rows if r[1] >= first_test], names, tfds_name)
    assert not set(split.train.class_names) & set(split.test.class_names)
    assert split.channels == 3
    assert sorted(fake.calls) == [(tfds_name, "test"), (tfds_name, "train")]


def test_cub_class_names_carry_the_paper_ids(fake):
    split = tfds_loaders.load_cub200(cache_dir=fake.cache_dir)
    train_ids = [int(n.split(".")[0]) for n in split.train.class_names]
    test_ids = [int(n.split(".")[0]) for n in split.test.class_names]
    assert train_ids == [1, 4, 43, 100] and test_ids == [101, 151, 200]


@pytest.mark.parametrize(
    "tfds_name, loader, channels",
    [("stanford_online_products", tfds_loaders.load_sop, 3), ("omniglot", tfds_loaders.load_tfds_omniglot, 1)],
)
def test_class_split_datasets_keep_the_tfds_split(fake, tfds_name, loader, channels):
    split = loader(cache_dir=fake.cache_dir)
    names = {label: str(label) for _, label, _ in _rows(tfds_name, ("train", "test"))}  # numeric TFDS names
    _check_files(split.train, _rows(tfds_name, ("train",)), names, tfds_name)
    _check_files(split.test, _rows(tfds_name, ("test",)), names, tfds_name)
    assert not set(split.train.class_names) & set(split.test.class_names)
    assert split.channels == channels


def test_sop_rejects_a_class_in_both_tfds_splits(fake, monkeypatch):
    monkeypatch.setitem(LABELS, ("stanford_online_products", "test"), [11318, 5])
    with pytest.raises(ValueError, match="class_id=5"):
        tfds_loaders.load_sop(cache_dir=fake.cache_dir)


@pytest.mark.parametrize("seed", [0, 3])
def test_imagenet_holds_out_a_seeded_class_split(fake, seed):
    split = tfds_loaders.load_imagenet2012(test_fraction=0.3, seed=seed, cache_dir=fake.cache_dir)
    held_out = set(np.random.default_rng(seed).permutation(1000)[:300].tolist())
    names = dict(enumerate(tfds.builder("imagenet2012").info.features["label"].names))
    train_rows = [r for r in _rows("imagenet2012", ("train",)) if r[1] not in held_out]
    test_rows = [r for r in _rows("imagenet2012", ("validation",)) if r[1] in held_out]
    assert train_rows and test_rows  # Both sides are exercised.
    _check_files(split.train, train_rows, names, "imagenet2012")
    _check_files(split.test, test_rows, names, "imagenet2012")
    assert split.train.paths[0].endswith(".jpg")  # imagenet2012 stores JPEG.


def test_test_fraction_zero_trains_on_every_class(fake):
    cub = tfds_loaders.load_cub200(test_fraction=0, cache_dir=fake.cache_dir)
    rows = _rows("caltech_birds2011", ("train", "test"))
    assert cub.test is None
    assert [int(n.split(".")[0]) - 1 for n in cub.train.class_names] == sorted({r[1] for r in rows})
    assert len(cub.train) == len(rows)
    sop = tfds_loaders.load_sop(test_fraction=0, cache_dir=fake.cache_dir)
    assert sop.test is None and sop.train.class_names == ("0", "5", "11317", "11318", "22633")
    imagenet = tfds_loaders.load_imagenet2012(test_fraction=0, cache_dir=fake.cache_dir)
    assert imagenet.test is None and imagenet.train.num_classes == 20
    assert ("imagenet2012", "validation") not in fake.calls  # Not needed, not extracted.


def test_extracted_png_decodes_to_the_mocked_pixels(fake):
    split = tfds_loaders.load_cub200(cache_dir=fake.cache_dir)
    rows = [r for r in _rows("caltech_birds2011", ("train", "test")) if r[1] < 100]
    for path, (_, _, example) in zip(split.train.paths, rows, strict=True):
        assert path.endswith(".png")
        pixels = data.decode_image(tf.io.read_file(path), SIDE, 3).numpy()
        np.testing.assert_allclose(pixels, example["image"] / 255.0, atol=1e-6)


def test_channels_and_test_fraction_are_checked_before_extracting(fake):
    with pytest.raises(ValueError, match="channels"):
        tfds_loaders.load_cub200(channels=2, cache_dir=fake.cache_dir)
    with pytest.raises(ValueError, match="test_fraction"):
        tfds_loaders.load_cars196(test_fraction=1.0, cache_dir=fake.cache_dir)
    assert not fake.calls and not os.path.exists(fake.cache_dir)
    assert tfds_loaders.load_cub200(channels=1, cache_dir=fake.cache_dir).channels == 1


def test_works_with_the_stock_mock_data(metadata_dir, tmp_path):
    # TFDS's own fake examples: random labels in 0..199, identical train and test splits.
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=metadata_dir):
        split = tfds_loaders.load_cub200(cache_dir=str(tmp_path))
    ids = {side: [int(n.split(".")[0]) for n in getattr(split, side).class_names] for side in ("train", "test")}
    assert ids["train"] and ids["test"]  # This fake data has classes on both sides.
    assert max(ids["train"]) <= 100 < min(ids["test"])
    assert len(split.train) + len(split.test) == 2 * 12
    for path in [*split.train.paths, *split.test.paths]:
        assert data.decode_image(tf.io.read_file(path), 4, 3).shape == (4, 4, 3)


# --------------------------------------------------------------------------- cache


def test_second_call_reuses_the_cache(fake):
    first = tfds_loaders.load_cub200(cache_dir=fake.cache_dir)
    calls = list(fake.calls)
    stamps = {p: os.stat(p).st_mtime_ns for p in first.train.paths}
    second = data.load_dataset("caltech_birds2011", cache_dir=fake.cache_dir)
    assert fake.calls == calls  # TFDS was not read again.
    np.testing.assert_array_equal(second.train.paths, first.train.paths)
    np.testing.assert_array_equal(second.test.labels, first.test.labels)
    assert second.test.class_names == first.test.class_names
    assert {p: os.stat(p).st_mtime_ns for p in second.train.paths} == stamps
    root = pathlib.Path(fake.cache_dir) / "caltech_birds2011" / str(tfds.builder("caltech_birds2011").version)
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]


def test_interrupted_extraction_is_redone(fake, tmp_path):
    fake.fail_after = 3
    with pytest.raises(tf.errors.OpError, match="interrupted"):
        tfds_loaders.load_cars196(cache_dir=fake.cache_dir)
    train_root = pathlib.Path(fake.cache_dir) / "cars196" / str(tfds.builder("cars196").version) / "train"
    assert not (train_root / "index.tsv").exists()  # No completion marker.
    assert len([p for p in train_root.rglob("*.png")]) == 3  # Only whole files under final names.
    fake.fail_after = None
    calls = len(fake.calls)
    resumed = tfds_loaders.load_cars196(cache_dir=fake.cache_dir)
    assert len(fake.calls) > calls  # Extracted again.
    fresh = tfds_loaders.load_cars196(cache_dir=str(tmp_path / "fresh"))
    for side in ("train", "test"):
        got, want = getattr(resumed, side), getattr(fresh, side)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert [pathlib.Path(p).read_bytes() for p in got.paths] == [pathlib.Path(p).read_bytes() for p in want.paths]
    assert not list(train_root.rglob("*.partial"))


def test_default_cache_dir_is_under_the_data_dir(fake, tmp_path):
    split = tfds_loaders.load_tfds_omniglot(data_dir=str(tmp_path / "tfds"))
    assert split.train.paths[0].startswith(str(tmp_path / "tfds" / "pddm_tf_files" / "omniglot") + os.sep)


# --------------------------------------------------------------------------- names and errors


def test_load_dataset_dispatches_tfds_names_and_aliases(fake):
    for name, alias in [("cub200", "caltech_birds2011"), ("sop", "stanford_online_products")]:
        by_name = data.load_dataset(name, test_fraction=0.3, seed=5, cache_dir=fake.cache_dir)
        by_alias = data.load_dataset(alias, cache_dir=fake.cache_dir)
        np.testing.assert_array_equal(by_name.test.paths, by_alias.test.paths)
    omniglot = data.load_dataset("tfds_omniglot", cache_dir=fake.cache_dir)
    assert omniglot.train.class_names == ("0", "963")
    assert data.load_dataset("omniglot").train.num_classes == 121  # Still the embedded subset.


@pytest.mark.parametrize("name", ["cub", "Cars196", "tfds:cars196"])
def test_unknown_names_list_the_known_ones(name):
    with pytest.raises(ValueError) as error:
        data.load_dataset(name)
    for known in ["omniglot", "folder:PATH", *tfds_loaders.TFDS_LOADERS]:
        assert repr(known) in str(error.value)
    with pytest.raises(ValueError, match="'tfds_omniglot'"):
        tfds_loaders.load_tfds(name)


def test_not_prepared_cars_says_how_to_give_the_files(tmp_path, monkeypatch):
    prepared = []
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", lambda *a, **k: prepared.append(k))
    with pytest.raises(tfds_loaders.DatasetNotPreparedError) as error:
        tfds_loaders.load_cars196(data_dir=str(tmp_path))
    message = str(error.value)
    for part in [
        "'cars196'",
        repr(str(tmp_path)),
        repr(os.path.join(str(tmp_path), "downloads", "manual")),
        "cars_train.tgz, cars_test.tgz, cars_test_annos_withlabels.mat, car_devkit.tgz",
        "#4932",
        "download=True",
        "download_config=tfds.download.DownloadConfig(manual_dir=",
    ]:
        assert part in message
    assert not prepared  # download=False never downloads.
    assert not (tmp_path / "pddm_tf_files").exists()


def test_not_prepared_imagenet_names_the_manual_files(tmp_path):
    with pytest.raises(tfds_loaders.DatasetNotPreparedError) as error:
        tfds_loaders.load_imagenet2012(data_dir=str(tmp_path), manual_dir="/data/imagenet_tars")
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar" in message
    assert "'/data/imagenet_tars'" in message and repr(str(tmp_path)) in message


def test_not_prepared_downloadable_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as error:  # DatasetNotPreparedError is one.
        tfds_loaders.load_sop(data_dir=str(tmp_path))
    message = str(error.value)
    assert "'stanford_online_products'" in message and repr(str(tmp_path)) in message
    assert "download=True" in message and ".download_and_prepare()" in message


def test_download_true_prepares_with_the_manual_dir(tmp_path, monkeypatch):
    configs = []

    def failing_prepare(self, download_config=None, **kwargs):
        configs.append(download_config)
        raise RuntimeError("no internet")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", failing_prepare)
    with pytest.raises(tfds_loaders.DatasetNotPreparedError, match="RuntimeError: no internet") as error:
        tfds_loaders.load_cars196(data_dir=str(tmp_path), download=True, manual_dir=str(tmp_path / "manual"))
    assert [str(c.manual_dir) for c in configs] == [str(tmp_path / "manual")]
    assert "car_devkit.tgz" in str(error.value)
