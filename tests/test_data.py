"""Tests of pddm_tf.data against references computed independently (os.walk, PIL, numpy)."""

import io
import logging
import os
import pathlib
import re
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import pddm_tf
from pddm_tf import data

OMNIGLOT = pathlib.Path(pddm_tf.__file__).parent / "_data" / "omniglot_background_small"
A_PNG = OMNIGLOT / "Greek" / "character01" / "0394_01.png"


# --------------------------------------------------------------------------- helpers


def _omniglot_reference() -> dict[str, int]:
    """Class name "alphabet/character" -> number of PNGs, by walking the folder."""
    counts = {}
    for dirpath, _, filenames in os.walk(OMNIGLOT):
        pngs = [f for f in filenames if f.endswith(".png")]
        if pngs:
            counts[pathlib.Path(dirpath).relative_to(OMNIGLOT).as_posix()] = len(pngs)
    return counts


def _class_of_path(path: str, root: pathlib.Path) -> str:
    return pathlib.Path(path).parent.relative_to(root).as_posix()


def _image_bytes(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def _pil_pixels(encoded: bytes, mode: str) -> np.ndarray:
    """[h, w, c] float32 in [0, 1] decoded by PIL."""
    pixels = np.asarray(Image.open(io.BytesIO(encoded)).convert(mode), np.float32) / 255
    return pixels.reshape(pixels.shape[:2] + (-1,))


def _write_index_png(path: pathlib.Path, index: int) -> None:
    """A 4x4 grayscale PNG whose every pixel is `index`, so decoded rows name their file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(np.full((4, 4, 1), index, np.uint8)).numpy())


def _file_indices(images: np.ndarray) -> np.ndarray:
    """Recovers the file index of each decoded [n, 4, 4, 1] index image."""
    assert np.all(images == images[:, :1, :1, :])  # Constant images: no resampling mix-up.
    return np.rint(images[:, 0, 0, 0] * 255).astype(int)


@pytest.fixture(scope="module")
def indexed_files(tmp_path_factory) -> data.ImageFiles:
    """9 classes of 3..6 index PNGs; file i has label `labels[i]`."""
    root = tmp_path_factory.mktemp("indexed")
    counts = [3, 4, 5, 3, 6, 4, 3, 5, 4]
    labels = np.repeat(np.arange(len(counts)), counts)
    # Interleave the classes so that the pipeline cannot rely on rows sorted by label.
    labels = labels[np.random.default_rng(7).permutation(len(labels))]
    paths = [root / f"class{label}" / f"{i}.png" for i, label in enumerate(labels)]
    for i, path in enumerate(paths):
        _write_index_png(path, i)
    return data.ImageFiles(
        paths=np.array([str(p) for p in paths]),
        labels=labels,
        class_names=tuple(f"class{c}" for c in range(len(counts))),
        rotations=np.zeros(len(paths), np.int32),
    )


def _take(dataset: tf.data.Dataset, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(n)]


# --------------------------------------------------------------------------- ImageFiles


def test_image_files_validates_and_freezes():
    files = data.ImageFiles(np.array(["a", "b"]), [1, 0], ("x", "y"), [0, 3])
    assert files.labels.dtype == np.int32 and len(files) == 2 and files.num_classes == 2
    with pytest.raises(ValueError):
        files.labels[0] = 1  # Read-only.
    with pytest.raises(ValueError, match="length"):
        data.ImageFiles(np.array(["a", "b"]), [0], ("x",), [0, 0])
    with pytest.raises(ValueError, match="labels"):
        data.ImageFiles(np.array(["a"]), [2], ("x", "y"), [0])
    with pytest.raises(ValueError, match="rotations"):
        data.ImageFiles(np.array(["a"]), [0], ("x",), [4])
    with pytest.raises(ValueError, match="1-D"):
        data.ImageFiles(np.array([["a"]]), [[0]], ("x",), [[0]])


# --------------------------------------------------------------------------- load_omniglot


def test_omniglot_whole_dataset_matches_the_folder():
    reference = _omniglot_reference()
    split = data.load_omniglot(test_fraction=0)
    assert split.test is None and split.channels == 1
    train = split.train
    assert len(reference) == 242 and sum(reference.values()) == 4840
    assert train.class_names == tuple(sorted(reference)) and len(train) == 4840
    names = np.array(train.class_names)[train.labels]
    assert list(names) == [_class_of_path(p, OMNIGLOT) for p in train.paths]
    assert np.all(np.bincount(train.labels) == [reference[n] for n in train.class_names])
    assert np.all(train.rotations == 0)


def test_omniglot_character_split_is_class_disjoint():
    split = data.load_omniglot(test_fraction=0.5, seed=3)
    train, test = set(split.train.class_names), set(split.test.class_names)
    assert len(test) == 121 and len(train) == 121
    assert train.isdisjoint(test) and train | test == set(_omniglot_reference())
    assert len(split.train) + len(split.test) == 4840
    for files in (split.train, split.test):
        names = np.array(files.class_names)[files.labels]
        assert list(names) == [_class_of_path(p, OMNIGLOT) for p in files.paths]
    assert data.load_omniglot(test_fraction=0.25).test.num_classes == round(0.25 * 242)


def test_omniglot_alphabet_split_keeps_alphabets_whole():
    split = data.load_omniglot(test_fraction=0.5, split_by="alphabet", seed=1)
    alphabet = lambda files: {n.split("/")[0] for n in files.class_names}  # noqa: E731
    assert alphabet(split.train).isdisjoint(alphabet(split.test))
    assert split.train.num_classes + split.test.num_classes == 242
    assert split.test.num_classes >= 121
    # Alphabets are taken until the fraction is reached: one alphabet less falls short.
    sizes = {a: sum(n.startswith(a + "/") for n in split.test.class_names) for a in alphabet(split.test)}
    assert split.test.num_classes - min(sizes.values()) < 121


def test_omniglot_rotations_make_four_classes_on_the_same_side():
    plain = data.load_omniglot(test_fraction=0.5, seed=2)
    split = data.load_omniglot(test_fraction=0.5, seed=2, rotations=True)
    for base, files in ((plain.train, split.train), (plain.test, split.test)):
        assert files.num_classes == 4 * base.num_classes and len(files) == 4 * len(base)
        # Rotated copies stay with their character: same characters, same side.
        assert {n.rsplit("/", 1)[0] for n in files.class_names} == set(base.class_names)
        names = np.array(files.class_names)[files.labels]
        assert all(n.endswith(f"/rot{90 * k}") for n, k in zip(names, files.rotations))
        assert all(n.rsplit("/", 1)[0] == _class_of_path(p, OMNIGLOT) for n, p in zip(names, files.paths))
        assert np.all(np.bincount(files.rotations) == len(base))


def test_omniglot_split_depends_on_the_seed():
    names = lambda seed: data.load_omniglot(seed=seed).test.class_names  # noqa: E731
    assert names(0) == names(0)
    assert set(names(0)) != set(names(1))
    alphabets = lambda seed: data.load_omniglot(split_by="alphabet", seed=seed).test.class_names  # noqa: E731
    assert alphabets(5) == alphabets(5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"test_fraction": float("nan")}, "test_fraction"),
        ({"test_fraction": 0.001}, "test_fraction"),  # Rounds to an empty test split.
        ({"split_by": "drawer"}, "split_by"),
        ({"root": "/no/such/omniglot"}, "/no/such/omniglot"),
    ],
)
def test_omniglot_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        data.load_omniglot(**kwargs)


# --------------------------------------------------------------------------- decode_image


def test_decode_image_matches_pil_at_native_size():
    encoded = A_PNG.read_bytes()
    reference = _pil_pixels(encoded, "L")
    assert set(np.unique(reference)) == {0.0, 1.0}  # 1-bit PNG: black and white only.
    image = data.decode_image(tf.constant(encoded), 105, 1).numpy()
    assert image.dtype == np.float32 and image.shape == (105, 105, 1)
    np.testing.assert_array_equal(image, reference)
    rgb = data.decode_image(tf.constant(encoded), 105, 3).numpy()
    np.testing.assert_array_equal(rgb, np.repeat(reference, 3, axis=-1))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_decode_image_rotates_counter_clockwise(k):
    encoded = tf.constant(A_PNG.read_bytes())
    reference = np.rot90(_pil_pixels(A_PNG.read_bytes(), "L"), k)
    np.testing.assert_array_equal(data.decode_image(encoded, 105, 1, k).numpy(), reference)
    np.testing.assert_array_equal(data.decode_image(encoded, 105, 1, tf.constant(k)).numpy(), reference)


@pytest.mark.parametrize("size", [28, 35, 64])
def test_decode_image_resizes_like_pil_antialiased_bilinear(size):
    pixels = _pil_pixels(A_PNG.read_bytes(), "L")[..., 0]
    # PIL's bilinear filter widens its support when downscaling, as TF's antialias does.
    reference = np.asarray(Image.fromarray(pixels, mode="F").resize((size, size), Image.BILINEAR))
    image = data.decode_image(tf.constant(A_PNG.read_bytes()), size, 1).numpy()
    np.testing.assert_allclose(image[..., 0], reference, atol=1e-5)
    assert image.min() >= 0 and image.max() <= 1


@pytest.mark.parametrize("fmt, atol", [("PNG", 0), ("BMP", 0), ("GIF", 0), ("JPEG", 3 / 255)])
def test_decode_image_reads_every_format(fmt, atol):
    rng = np.random.default_rng(0)
    # Smooth colours so that JPEG is near-lossless and GIF's palette holds them all.
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    array = np.repeat(np.repeat(palette.reshape(2, 2, 3), 8, axis=0), 8, axis=1)  # 16x16x3
    encoded = _image_bytes(array, fmt)
    for channels, mode in ((3, "RGB"), (1, "L")):
        image = data.decode_image(tf.constant(encoded), 16, channels).numpy()
        # Luma weights differ in the 4th decimal between TF and PIL: allow one grey level.
        tolerance = atol + (1.01 / 255 if channels == 1 else 0)
        np.testing.assert_allclose(image, _pil_pixels(encoded, mode), atol=tolerance)


def test_decode_images_is_a_traceable_batch_of_decode_image():
    encoded = [p.read_bytes() for p in sorted(A_PNG.parent.glob("*.png"))[:3]]
    encoded.append(_image_bytes(np.zeros((7, 9, 3), np.uint8) + 200, "JPEG"))
    serve = tf.function(
        lambda batch: data.decode_images(batch, 28, 1),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    images = serve(tf.constant(encoded)).numpy()
    assert images.shape == (4, 28, 28, 1)
    for image, one in zip(images, encoded):
        np.testing.assert_array_equal(image, data.decode_image(tf.constant(one), 28, 1).numpy())
    np.testing.assert_allclose(images[3], 200 / 255, atol=1.5 / 255)


# --------------------------------------------------------------------------- class_balanced_dataset


def _check_batch(files: data.ImageFiles, images, labels, p: int, k: int) -> np.ndarray:
    """Checks one P x K batch against the files it decoded; returns its [P] classes."""
    assert images.shape == (p * k, 4, 4, 1) and labels.dtype == np.int32
    indices = _file_indices(images).reshape(p, k)
    by_class = labels.reshape(p, k)
    np.testing.assert_array_equal(files.labels[indices], by_class)  # Labels name the right class.
    assert np.all(by_class == by_class[:, :1])  # Rows grouped by class, K per class.
    assert len(set(by_class[:, 0])) == p  # P distinct classes.
    assert all(len(set(row)) == k for row in indices)  # K distinct images per class.
    return by_class[:, 0]


@pytest.mark.parametrize("p, k", [(3, 3), (4, 2), (2, 1)])
def test_class_balanced_batches(indexed_files, p, k):
    steps = data.steps_per_pass(indexed_files, p)
    assert steps == 9 // p
    batches = _take(data.class_balanced_dataset(indexed_files, p, k, 4, 1, seed=0), 3 * steps)
    classes = [_check_batch(indexed_files, x, y, p, k) for x, y in batches]
    for start in range(0, len(classes), steps):  # Within a pass no class repeats.
        visited = np.concatenate(classes[start : start + steps])
        assert len(set(visited)) == steps * p
        if 9 % p == 0:
            assert set(visited) == set(range(9))  # Every class visited once per pass.


def test_class_balanced_is_deterministic_and_passes_differ(indexed_files):
    make = lambda seed: data.class_balanced_dataset(indexed_files, 3, 2, 4, 1, seed=seed)  # noqa: E731
    first, again, other = _take(make(0), 6), _take(make(0), 6), _take(make(1), 6)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    order = lambda batches: np.concatenate([y for _, y in batches])  # noqa: E731
    assert not np.array_equal(order(first[:3]), order(first[3:]))  # Pass 0 vs pass 1.
    assert not np.array_equal(order(first), order(other))


def test_class_balanced_reshuffles_each_class_pool(indexed_files):
    # With K=2 out of up to 6 images, 30 passes sample every image of every class.
    batches = _take(data.class_balanced_dataset(indexed_files, 3, 2, 4, 1), 30 * 3)
    sampled = np.concatenate([_file_indices(x) for x, _ in batches])
    assert set(sampled) == set(range(len(indexed_files)))


def test_class_balanced_applies_rotations(tmp_path):
    pixels = np.zeros((4, 4, 1), np.uint8)
    pixels[0, 1] = 255  # Asymmetric: every rotation moves the dot.
    path = tmp_path / "dot.png"
    path.write_bytes(tf.io.encode_png(pixels).numpy())
    files = data.ImageFiles(np.array([str(path)] * 4), [0, 1, 2, 3], ("r0", "r1", "r2", "r3"), [0, 1, 2, 3])
    images, labels = _take(data.class_balanced_dataset(files, 4, 1, 4, 1), 1)[0]
    for image, label in zip(images, labels):
        np.testing.assert_array_equal(image, np.rot90(pixels / 255, label))


@pytest.mark.parametrize(
    "p, k, message",
    [
        (1, 2, "batch_classes must be >= 2"),
        (2, 0, "batch_per_class must be >= 1"),
        (10, 2, "only 9 classes but batch_classes=10"),
        (2, 4, "class 'class0' has 3 images but batch_per_class=4"),
    ],
)
def test_class_balanced_rejects_impossible_batches(indexed_files, p, k, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        data.class_balanced_dataset(indexed_files, p, k, 4, 1)


def test_class_balanced_needs_two_classes():
    files = data.ImageFiles(np.array(["a", "b"]), [0, 0], ("only",), [0, 0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        data.class_balanced_dataset(files, 2, 1, 4, 1)


# --------------------------------------------------------------------------- evaluation_dataset


def test_evaluation_dataset_keeps_file_order(indexed_files):
    batches = _take(data.evaluation_dataset(indexed_files, 4, 1, batch_size=8), 100)
    assert [len(y) for _, y in batches] == [8] * 4 + [5]  # 37 files.
    indices = np.concatenate([_file_indices(x) for x, _ in batches])
    np.testing.assert_array_equal(indices, np.arange(len(indexed_files)))
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), indexed_files.labels)


# --------------------------------------------------------------------------- load_folder


def _write_tree(root: pathlib.Path) -> dict[str, str]:
    """A folder dataset in every format; returns file name -> class."""
    rng = np.random.default_rng(0)
    layout = {
        "cats/a.png": "PNG",
        "cats/b.JPG": "JPEG",
        "dogs/c.jpeg": "JPEG",
        "dogs/d.bmp": "BMP",
        "dogs/e.gif": "GIF",
        "birds/finch/f.png": "PNG",
        "birds/finch/g.PNG": "PNG",
        "birds/h.png": "PNG",
    }
    for name, fmt in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_image_bytes(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), fmt))
    (root / "notes.txt").write_text("not an image")
    (root / "cats" / "thumbs.db").write_bytes(b"\x00" * 10)
    (root / "loose.png").write_bytes(_image_bytes(np.zeros((4, 4, 3), np.uint8), "PNG"))  # No class.
    return {pathlib.Path(n).name: str(pathlib.Path(n).parent.as_posix()) for n in layout}


def test_load_folder_labels_every_image_by_its_folder(tmp_path):
    expected = _write_tree(tmp_path)
    split = data.load_folder(str(tmp_path), test_fraction=0, channels=1)
    files = split.train
    assert split.test is None and split.channels == 1
    assert files.class_names == ("birds", "birds/finch", "cats", "dogs")
    assert sorted(pathlib.Path(p).name for p in files.paths) == sorted(expected)
    for path, label in zip(files.paths, files.labels):
        assert files.class_names[label] == expected[pathlib.Path(path).name]
    split = data.load_folder(str(tmp_path), test_fraction=0.5, seed=0)
    assert split.channels == 3 and split.train.num_classes == split.test.num_classes == 2
    assert set(split.train.class_names).isdisjoint(split.test.class_names)


def test_load_folder_skips_corrupt_files_with_a_warning(tmp_path, caplog):
    expected = _write_tree(tmp_path)
    (tmp_path / "cats" / "x.png").write_bytes(np.random.default_rng(1).bytes(200))
    truncated = _image_bytes(np.zeros((8, 8, 3), np.uint8), "PNG")[:40]  # Valid magic number.
    (tmp_path / "dogs" / "y.png").write_bytes(truncated)
    with caplog.at_level(logging.WARNING):
        files = data.load_folder(str(tmp_path), test_fraction=0).train
    assert sorted(pathlib.Path(p).name for p in files.paths) == sorted(expected)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(tmp_path / "cats" / "x.png") in warned and str(tmp_path / "dogs" / "y.png") in warned
    # Without validation the corrupt files are kept (and the caller trusts the data).
    assert len(data.load_folder(str(tmp_path), test_fraction=0, validate=False).train) == len(expected) + 2


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_skipped_files_are_one_warning_line_each_naming_the_file_and_the_reason(tmp_path, caplog):
    _write_tree(tmp_path)
    png = bytearray(_image_bytes(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8), "PNG"))
    png[60:80] = bytes(20)  # inside the image data: the header reads, the decoder fails
    gif = bytearray(_image_bytes(np.zeros((16, 16, 3), np.uint8), "GIF"))
    descriptor = gif.index(0x2C, 13 + 3 * 2 ** ((gif[10] & 7) + 1))
    gif[descriptor + 5:descriptor + 9] = struct.pack("<HH", 6000, 5000)  # a first image larger than its screen
    bad = {
        "cats/damaged.png": (bytes(png), "Invalid PNG data"),
        "cats/truncated.jpg": (_image_bytes(np.zeros((16, 16, 3), np.uint8), "JPEG")[:30], "truncated JPEG"),
        "dogs/bomb.png": (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0,
                                                                                0)) + _png_chunk(b"IEND", b""),
                          "20000 x 20000 = 400000000 pixels"),
        "dogs/frame.gif": (bytes(gif), "first image of the GIF is 6000 x 5000"),
    }
    for name, (encoded, _) in bad.items():
        (tmp_path / name).write_bytes(encoded)
    with caplog.at_level(logging.WARNING, logger="pddm_tf.data"):
        data.load_folder(str(tmp_path), test_fraction=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, (_, reason) in bad.items():
        (line,) = [w for w in warnings if str(tmp_path / name) in w]
        assert reason in line and "\n" not in line, line
        for noise in ("Graph execution error", ".py", "{{", "tf.Tensor(", "Summarized data", "[Op:"):
            assert noise not in line, line


def test_load_folder_errors_name_the_folder(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        data.load_folder(str(missing))
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images.*" + re.escape(str(empty))):
        data.load_folder(str(empty))
    single = tmp_path / "single"
    _write_index_png(single / "only" / "0.png", 0)
    _write_index_png(single / "only" / "1.png", 1)
    with pytest.raises(ValueError, match=re.escape(str(single)) + ".*1 class"):
        data.load_folder(str(single))
    # Skipping a corrupt file can leave a single class: checked again after validation.
    (single / "bad" / "x.png").parent.mkdir()
    (single / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="1 class"):
        data.load_folder(str(single))
    assert data.load_folder(str(single), validate=False, test_fraction=0).train.num_classes == 2


def test_load_folder_class_with_one_image_cannot_give_two(tmp_path):
    _write_index_png(tmp_path / "a" / "0.png", 0)
    _write_index_png(tmp_path / "a" / "1.png", 1)
    _write_index_png(tmp_path / "b" / "2.png", 2)
    files = data.load_folder(str(tmp_path), test_fraction=0, channels=1).train
    with pytest.raises(ValueError, match=re.escape("class 'b' has 1 image but batch_per_class=2")):
        data.class_balanced_dataset(files, 2, 2, 4, 1)
    images, labels = _take(data.class_balanced_dataset(files, 2, 1, 4, 1), 1)[0]
    np.testing.assert_array_equal(files.labels[_file_indices(images)], labels)


# --------------------------------------------------------------------------- load_dataset


def test_load_dataset_dispatches_by_name(tmp_path):
    _write_tree(tmp_path)
    by_name = data.load_dataset(f"folder:{tmp_path}", test_fraction=0.5, seed=4, channels=1)
    direct = data.load_folder(str(tmp_path), test_fraction=0.5, seed=4, channels=1)
    assert by_name.channels == 1
    assert by_name.test.class_names == direct.test.class_names
    np.testing.assert_array_equal(by_name.train.paths, direct.train.paths)
    omniglot = data.load_dataset("omniglot", test_fraction=0.25, seed=1, rotations=True)
    assert omniglot.test.num_classes == 4 * round(0.25 * 242)


@pytest.mark.parametrize("name", ["nope", "folder:", "Omniglot"])
def test_load_dataset_rejects_unknown_names(name):
    with pytest.raises(ValueError) as error:
        data.load_dataset(name)
    assert repr(name) in str(error.value)
    assert "'omniglot'" in str(error.value) and "'folder:PATH'" in str(error.value)


def test_test_groups_hold_out_named_alphabets_and_folders(tmp_path):
    split = data.load_omniglot(test_groups=("Greek", "Latin"))
    assert {n.split("/")[0] for n in split.test.class_names} == {"Greek", "Latin"}
    assert split.test.num_classes == 24 + 26 and split.train.num_classes == 242 - 50
    with pytest.raises(ValueError, match="unknown test group"):
        data.load_omniglot(test_groups=("Klingon",))
    _write_tree(tmp_path)  # top-level folders birds (with birds/finch), cats, dogs
    by_folder = data.load_folder(str(tmp_path), test_groups=("birds",), channels=1)
    assert by_folder.test.class_names == ("birds", "birds/finch")
    assert by_folder.train.class_names == ("cats", "dogs")
    # split_by="alphabet" keeps a top-level folder on one side, whatever the seed.
    for seed in range(4):
        grouped = data.load_folder(str(tmp_path), test_fraction=0.3, seed=seed, channels=1, split_by="alphabet")
        tops = lambda files: {n.split("/")[0] for n in files.class_names}  # noqa: E731
        assert tops(grouped.train).isdisjoint(tops(grouped.test))


def test_with_rotations_is_public_and_refuses_rotated_input():
    files = data.load_omniglot(test_groups=("Greek",)).test
    rotated = data.with_rotations(files)
    assert rotated.num_classes == 4 * files.num_classes
    with pytest.raises(ValueError, match="unrotated"):
        data.with_rotations(rotated)


def test_read_image_applies_a_transform_to_the_full_size_rotated_image():
    """`read_image(..., transform=t, seed=s)` is t(PIL's full-size pixels rotated k x 90 degrees, s); without a
    seed, t sees zeros."""
    reference = np.asarray(Image.open(A_PNG).convert("L"), dtype=np.uint8)[:, :, None]
    seen = []

    def corner(image, seed):  # a transform that records its seed and keeps a float 8 x 8 corner
        seen.append(seed)
        return tf.cast(image[:8, :8], tf.float32) / 255.0 + tf.cast(seed[0], tf.float32)

    for rotation, seed, offset in ((0, None, 0.0), (1, tf.constant([3, 9], tf.int64), 3.0)):
        got = data.read_image(tf.constant(str(A_PNG)), 8, 1, rotation, transform=corner, seed=seed).numpy()
        want = np.rot90(reference, k=rotation)[:8, :8].astype(np.float32) / 255.0 + offset
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert [list(np.asarray(s)) for s in seen] == [[0, 0], [3, 9]]
    with pytest.raises(tf.errors.InvalidArgumentError, match="not compatible with expected shape"):  # [s, s, c]
        data.read_image(tf.constant(str(A_PNG)), 9, 1, transform=corner)


def test_quarter_turns_equal_numpy_rot90_eager_and_traced():
    """The loader's rotation (pixels gathered, not transposed: see `decode._rot90`) is np.rot90 for
    every number of turns, on a non-square image, with the turns known or a tensor."""
    from pddm_tf.data.decode import _rot90

    image = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3)).astype(np.uint8)
    traced = tf.function(_rot90)
    for turns in range(-1, 6):
        np.testing.assert_array_equal(_rot90(tf.constant(image), turns).numpy(), np.rot90(image, turns))
        np.testing.assert_array_equal(traced(tf.constant(image), tf.constant(turns)).numpy(), np.rot90(image, turns))
