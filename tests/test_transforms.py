"""Tests of the P x K sampler (pddm_tf.data.balanced_batch_indices, class_balanced_dataset's
small_classes / augment options) and of the transforms in pddm_tf.data.transforms, against values
computed independently (numpy sets and crops, PIL resizing)."""

import io
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pddm_tf import data
from pddm_tf.data import transforms

# --------------------------------------------------------------------------- helpers


def _skewed_labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """[sum(counts)] labels, class c with counts[c] rows, rows of the classes interleaved."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return labels[np.random.default_rng(seed).permutation(len(labels))].astype(np.int32)


def _sample(labels: np.ndarray, p: int, k: int, seed, mask=None, min_class_size: int = 2) -> np.ndarray:
    rows = data.balanced_batch_indices(
        tf.constant(labels), int(labels.max()) + 1, p, k, tf.constant(seed, tf.int64),
        member_mask=None if mask is None else tf.constant(mask), min_class_size=min_class_size,
    )
    assert rows.dtype == tf.int64
    return rows.numpy()


def _check_pass(labels: np.ndarray, rows: np.ndarray, p: int, k: int, members: np.ndarray) -> np.ndarray:
    """Checks the [B, P*K] rows of one pass against `labels`; returns the [B*P] classes visited.

    `members`: [N] bool, the rows allowed. Per class, the expected pool is computed here with
    numpy: K distinct member rows when it has >= K, else all of them cycled in one order.
    """
    groups = rows.reshape(-1, p, k)
    classes = labels[groups[:, :, 0]]
    assert np.all(labels[groups] == classes[:, :, None])  # K rows per class, grouped.
    assert all(len(set(batch)) == p for batch in classes)  # P distinct classes per batch.
    assert np.all(members[groups])
    for group, label in zip(groups.reshape(-1, k), classes.reshape(-1)):
        pool = set(np.flatnonzero((labels == label) & members))
        assert len(pool) >= 2  # Never a single-image class.
        if len(pool) >= k:
            assert len(set(group)) == k
        else:  # Cycled: the first len(pool) rows are the whole pool, then they repeat in order.
            n = len(pool)
            assert set(group[:n]) == pool
            np.testing.assert_array_equal(group, group[np.arange(k) % n])
    visited = classes.reshape(-1)
    assert len(set(visited)) == len(visited)  # No class twice in a pass.
    return visited


def _index_png(index: int) -> bytes:
    """A 4x4 grayscale PNG whose every pixel is `index`: decoded rows name their file."""
    return tf.io.encode_png(np.full((4, 4, 1), index, np.uint8)).numpy()


def _indexed_files(root: pathlib.Path, counts: list[int]) -> data.ImageFiles:
    labels = _skewed_labels(counts, seed=1)
    paths = []
    for i, label in enumerate(labels):
        path = root / f"class{label}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_index_png(i))
        paths.append(str(path))
    names = tuple(f"class{c}" for c in range(len(counts)))
    return data.ImageFiles(np.array(paths), labels, names, np.zeros(len(labels), np.int32))


def _file_indices(images: np.ndarray) -> np.ndarray:
    assert np.all(images == images[:, :1, :1, :])
    return np.rint(images[:, 0, 0, 0] * 255).astype(int)


def _pil_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w, c] float in [0, 1] resized per channel by PIL's bilinear filter (which widens its
    support when downscaling, like TF's antialiasing)."""
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def _smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """[h, w, 3] uint8, smooth gradients plus a few blocks: asymmetric, JPEG-friendly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x / width, y / height, (x + 2 * y) / (width + 2 * height)], axis=-1) * 200
    for _ in range(4):
        top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
        image[top : top + height // 4, left : left + width // 5] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


# --------------------------------------------------------------------------- balanced_batch_indices

# Classes of 1, 2, 3, 5 and 50 images and more; classes 0 and 5 have a single image.
SKEWED = [1, 2, 3, 5, 50, 1, 4, 2, 7, 6]
ELIGIBLE = {c for c, n in enumerate(SKEWED) if n >= 2}  # 8 classes


@pytest.mark.parametrize("p, k", [(4, 4), (2, 3), (8, 2)])
def test_every_pass_visits_every_eligible_class_once(p, k):
    labels = _skewed_labels(SKEWED)
    everyone = np.ones(len(labels), bool)
    for pass_index in range(4):
        rows = _sample(labels, p, k, [7, pass_index])
        assert rows.shape == (len(ELIGIBLE) // p, p * k)
        assert set(_check_pass(labels, rows, p, k, everyone)) == ELIGIBLE  # P divides 8.


def test_left_over_classes_rotate_between_passes():
    labels = _skewed_labels(SKEWED)
    everyone = np.ones(len(labels), bool)
    seen = set()
    for pass_index in range(20):
        rows = _sample(labels, 3, 4, [0, pass_index])
        assert rows.shape == (2, 12)  # 8 eligible classes // 3: two classes sit each pass out.
        seen |= set(_check_pass(labels, rows, 3, 4, everyone))
    assert seen == ELIGIBLE


def test_every_image_of_a_large_class_gets_drawn_about_equally():
    labels = _skewed_labels(SKEWED)
    sample = tf.function(lambda seed: data.balanced_batch_indices(tf.constant(labels), 10, 4, 4, seed))
    rows = np.concatenate([sample(tf.constant([1, p], tf.int64)).numpy().ravel() for p in range(200)])
    drawn = np.bincount(rows[labels[rows] == 4], minlength=len(labels))[labels == 4]
    assert drawn.sum() == 200 * 4 and drawn.min() >= 4 and drawn.max() <= 30  # Mean 16.


def test_sampling_is_deterministic_by_seed_and_traceable():
    labels = _skewed_labels(SKEWED)
    first = _sample(labels, 4, 4, [3, 0])
    np.testing.assert_array_equal(first, _sample(labels, 4, 4, [3, 0]))
    assert not np.array_equal(first, _sample(labels, 4, 4, [3, 1]))
    assert not np.array_equal(first, _sample(labels, 4, 4, [4, 0]))
    traced = tf.function(
        lambda lab, seed: data.balanced_batch_indices(lab, 10, 4, 4, seed),
        input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)],
    )
    np.testing.assert_array_equal(traced(tf.constant(labels), tf.constant([3, 0], tf.int64)).numpy(), first)


def test_member_mask_restricts_rows_and_eligibility():
    counts = [6, 6, 6, 6, 6, 6]
    labels = _skewed_labels(counts)
    mask = np.random.default_rng(2).random(len(labels)) < 0.5
    mask[labels == 0] = False  # Class 0: no member.
    mask[labels == 1] = False
    mask[np.flatnonzero(labels == 1)[0]] = True  # Class 1: a single member, not eligible.
    mask[labels == 2] = False
    mask[np.flatnonzero(labels == 2)[:2]] = True  # Class 2: two members, cycled.
    member_counts = np.bincount(labels[mask], minlength=6)
    eligible = {c for c in range(6) if member_counts[c] >= 2}
    assert {0, 1}.isdisjoint(eligible) and 2 in eligible
    for pass_index in range(5):
        rows = _sample(labels, 2, 3, [9, pass_index], mask=tf.constant(mask))
        visited = _check_pass(labels, rows, 2, 3, mask)
        assert set(visited) <= eligible and len(visited) == len(eligible) // 2 * 2


def test_min_class_size_one_admits_single_image_classes():
    labels = _skewed_labels([1, 1, 3])
    rows = _sample(labels, 3, 2, [0, 0], min_class_size=1)
    groups = rows.reshape(3, 2)
    assert set(labels[groups[:, 0]]) == {0, 1, 2}
    single = groups[labels[groups[:, 0]] != 2]
    assert np.all(single[:, 0] == single[:, 1])  # One image, cycled.


def test_too_few_eligible_classes_is_an_error():
    labels = _skewed_labels([1, 5, 1, 4])  # Two eligible classes.
    with pytest.raises(tf.errors.InvalidArgumentError, match="fewer than batch_classes=3"):
        _sample(labels, 3, 2, [0, 0])
    with pytest.raises(ValueError, match="batch_per_class must be >= 1"):
        _sample(labels, 2, 0, [0, 0])


# --------------------------------------------------------------------------- class_balanced_dataset


@pytest.fixture(scope="module")
def small_class_files(tmp_path_factory) -> data.ImageFiles:
    """Index PNGs: classes of 1, 2, 3, 5, 1, 6, 2 images (two single-image classes)."""
    return _indexed_files(tmp_path_factory.mktemp("small"), [1, 2, 3, 5, 1, 6, 2])


def test_cycle_mode_end_to_end(small_class_files):
    files = small_class_files
    p, k = 5, 4
    assert data.steps_per_pass(files, p, small_classes="cycle") == 1
    assert data.steps_per_pass(files, p) == 1  # "error" counts every class: 7 // 5.
    dataset = data.class_balanced_dataset(files, p, k, 4, 1, seed=3, small_classes="cycle")
    everyone = np.ones(len(files), bool)
    batches = [(x.numpy(), y.numpy()) for x, y in dataset.take(3)]
    for images, labels in batches:
        assert images.shape == (p * k, 4, 4, 1) and labels.dtype == np.int32
        rows = _file_indices(images)
        np.testing.assert_array_equal(files.labels[rows], labels)  # Labels name the right files.
        visited = _check_pass(files.labels, rows[None], p, k, everyone)
        assert set(visited) == {1, 2, 3, 5, 6}  # Every eligible class, never 0 or 4.
    again = [y.numpy() for _, y in data.class_balanced_dataset(files, p, k, 4, 1, seed=3,
                                                                small_classes="cycle").take(3)]
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate([y for _, y in batches]))


def test_cycle_mode_errors(small_class_files):
    with pytest.raises(ValueError, match=re.escape("only 5 classes have at least 2 images but batch_classes=6")):
        data.class_balanced_dataset(small_class_files, 6, 2, 4, 1, small_classes="cycle")
    with pytest.raises(ValueError, match="small_classes must be one of"):
        data.class_balanced_dataset(small_class_files, 2, 2, 4, 1, small_classes="drop")
    # The default stays strict: a class with fewer than K images is an error.
    with pytest.raises(ValueError, match=re.escape("class 'class0' has 1 image but batch_per_class=2")):
        data.class_balanced_dataset(small_class_files, 2, 2, 4, 1)


def test_a_million_files_are_neither_read_nor_embedded_in_functions(tmp_path):
    # Rows 0-3: two classes of two real images. The other 999,996 rows are single-image
    # classes of files that do not exist: reading any of them would raise NotFoundError.
    n = 1_000_000
    real = [tmp_path / f"{i}.png" for i in range(4)]
    for i, path in enumerate(real):
        path.write_bytes(_index_png(i))
    paths = np.array([str(p) for p in real] + [f"/nonexistent/{i:07d}.png" for i in range(4, n)])
    labels = np.concatenate([[0, 0, 1, 1], np.arange(2, n - 2)]).astype(np.int32)
    files = data.ImageFiles(paths, labels, tuple(map(str, range(n - 2))), np.zeros(n, np.int32))
    dataset = data.class_balanced_dataset(files, 2, 2, 4, 1, seed=0, small_classes="cycle")
    for images, batch_labels in dataset.take(2):  # One pass (of one batch) each.
        rows = _file_indices(images.numpy())
        assert sorted(rows) == [0, 1, 2, 3]
        np.testing.assert_array_equal(labels[rows], batch_labels.numpy())
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    functions = sum(f.ByteSize() for f in graph.library.function)
    path_bytes = sum(len(p) for p in paths)  # 25 MB
    # The traced functions capture the paths by reference: they stay small (about 40 kB) ...
    assert functions < 200_000
    # ... and a serialised dataset holds the paths once (plus 4 MB of labels), not per function.
    assert graph.ByteSize() < path_bytes + 12 * n


# --------------------------------------------------------------------------- transforms


def test_center_crop_is_the_numpy_crop_of_the_resized_image():
    image = _smooth_image(75, 100)
    resized = transforms.resize_shorter_side(tf.constant(image), 64).numpy()
    assert resized.shape == (64, round(100 * 64 / 75), 3)
    np.testing.assert_allclose(resized, _pil_resize(image / 255, 64, 85), atol=2e-5)
    crop = transforms.center_crop(tf.constant(resized), 56).numpy()
    np.testing.assert_array_equal(crop, resized[4:60, 14:70])  # (64-56)//2, (85-56)//2
    tall = transforms.resize_shorter_side(tf.constant(image.transpose(1, 0, 2)), 64)
    assert tall.shape == (85, 64, 3)


@pytest.mark.parametrize("height, width", [(375, 500), (500, 375), (61, 80), (64, 64)])
def test_resized_center_crop_is_resize_then_crop_in_one_pass(height, width):
    image = tf.constant(_smooth_image(height, width, seed=height))
    two_steps = transforms.center_crop(transforms.resize_shorter_side(image, 37), 32)
    np.testing.assert_allclose(transforms.resized_center_crop(image, 37, 32), two_steps, atol=1e-4)


def test_eval_transform_resizes_then_crops():
    image = _smooth_image(60, 80)
    out = transforms.eval_transform(28)(tf.constant(image), tf.zeros([2], tf.int64)).numpy()
    assert out.dtype == np.float32 and out.shape == (28, 28, 3)  # Shorter side to 32.
    reference = _pil_resize(image / 255, 32, round(80 * 32 / 60))[2:30, 7:35]
    np.testing.assert_allclose(out, reference, atol=2e-5)
    assert transforms.eval_transform(224)(tf.constant(_smooth_image(375, 500)), tf.zeros([2], tf.int64)).shape == (
        224, 224, 3)
    with pytest.raises(ValueError, match="resize_size"):
        transforms.eval_transform(224, resize_size=200)


def test_random_resized_crop_windows_respect_scale_and_ratio():
    window = tf.function(transforms.random_crop_window)
    for height, width in ((75, 100), (40, 200)):
        areas, starts = [], set()
        for s in range(100):
            top, left, h, w = (int(v) for v in window(height, width, tf.constant([s, 1])))
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            # Area and aspect ratio within range up to the rounding to whole pixels.
            assert 0.16 * height * width * 0.9 <= h * w <= height * width
            assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
            areas.append(h * w / (height * width))
            starts.add((top, left))
        assert len(starts) > 30  # Varied positions ...
        # ... and sizes: up to the whole image, or to a 40 x 53 window of the elongated one.
        assert (np.ptp(areas) > 0.5) if height == 75 else (max(areas) <= 40 * 54 / 8000)
    # Nothing with these areas fits a 10 x 1000 strip: the centred window of ratio 4/3.
    top, left, h, w = (int(v) for v in transforms.random_crop_window(10, 1000, tf.constant([0, 0]), scale=(0.9, 1)))
    assert (top, left, h, w) == (0, (1000 - 13) // 2, 10, 13)


def test_random_resized_crop_cuts_the_window_and_resizes_it():
    image = _smooth_image(75, 100)
    seed = tf.constant([4, 2], tf.int64)
    out = transforms.random_resized_crop(tf.constant(image), 32, seed).numpy()
    assert out.dtype == np.float32 and out.shape == (32, 32, 3) and 0 <= out.min() and out.max() <= 1
    top, left, h, w = (int(v) for v in transforms.random_crop_window(75, 100, seed))
    np.testing.assert_allclose(out, _pil_resize(image[top : top + h, left : left + w] / 255, 32, 32), atol=2e-5)
    np.testing.assert_array_equal(out, transforms.random_resized_crop(tf.constant(image), 32, seed).numpy())
    other = transforms.random_resized_crop(tf.constant(image), 32, tf.constant([5, 2], tf.int64)).numpy()
    assert not np.array_equal(out, other)


def test_full_scale_square_crop_is_the_plain_resize():
    image = _smooth_image(64, 64)
    out = transforms.random_resized_crop(tf.constant(image), 24, tf.constant([0, 0]), scale=(1, 1), ratio=(1, 1))
    np.testing.assert_allclose(out.numpy(), _pil_resize(image / 255, 24, 24), atol=2e-5)
    # And exactly what decode_image gives for the same PNG (the default pipeline).
    decoded = data.decode_image(tf.io.encode_png(image), 24, 3).numpy()
    np.testing.assert_allclose(out.numpy(), decoded, atol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        transforms.random_resized_crop(tf.constant(image), 24, tf.constant([0, 0]), scale=(0.5, 1.5))


def test_train_transform_flips_about_half_the_time():
    image = _smooth_image(48, 48)
    plain = transforms.resize(tf.constant(image), 16, 16).numpy()
    transform = transforms.train_transform(16, scale=(1, 1), ratio=(1, 1))
    traced = tf.function(transform)
    flips = 0
    for s in range(100):
        out = traced(tf.constant(image), tf.constant([s, 0], tf.int64)).numpy()
        if np.allclose(out, plain[:, ::-1], atol=1e-6):
            flips += 1
        else:
            np.testing.assert_allclose(out, plain, atol=1e-6)
    assert 35 <= flips <= 65  # Binomial(100, 1/2): mean 50, std 5 (the seeds are fixed).
    seed = tf.constant([11, 0], tf.int64)
    np.testing.assert_array_equal(transform(tf.constant(image), seed), transform(tf.constant(image), seed))


# --------------------------------------------------------------------------- datasets with transforms


@pytest.fixture(scope="module")
def jpeg_files(tmp_path_factory) -> data.ImageFiles:
    """12 JPEGs of 60x80, 3 classes of 4."""
    root = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i in range(12):
        buffer = io.BytesIO()
        Image.fromarray(_smooth_image(60, 80, seed=i)).save(buffer, "JPEG", quality=90)
        (root / f"{i}.jpg").write_bytes(buffer.getvalue())
        paths.append(str(root / f"{i}.jpg"))
    return data.ImageFiles(np.array(paths), np.arange(12) // 4, ("a", "b", "c"), np.zeros(12, np.int32))


def test_augmented_batches_are_reproducible(jpeg_files):
    def make(seed: int) -> tf.data.Dataset:
        return data.class_balanced_dataset(jpeg_files, 2, 2, 24, 3, seed=seed, augment=transforms.train_transform(24))

    first = [(x.numpy(), y.numpy()) for x, y in make(0).take(3)]
    for images, labels in first:
        assert images.shape == (4, 24, 24, 3) and images.dtype == np.float32
        assert 0 <= images.min() and images.max() <= 1
        assert len(set(labels)) == 2 and np.all(labels.reshape(2, 2) == labels.reshape(2, 2)[:, :1])
    for (x1, y1), (x2, y2) in zip(first, ((x.numpy(), y.numpy()) for x, y in make(0).take(3))):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    other = next(iter(make(1)))[0].numpy()
    assert not np.array_equal(first[0][0], other)
    # The sampling does not depend on the augmentation: same labels as without it.
    plain = [y.numpy() for _, y in data.class_balanced_dataset(jpeg_files, 2, 2, 24, 3, seed=0).take(3)]
    np.testing.assert_array_equal(np.concatenate(plain), np.concatenate([y for _, y in first]))
    with pytest.raises(ValueError):  # The transform's size must be image_size.
        data.class_balanced_dataset(jpeg_files, 2, 2, 16, 3, augment=transforms.train_transform(24))


def test_evaluation_transform_and_cache(jpeg_files, tmp_path):
    transform = transforms.eval_transform(24, resize_size=32)
    plain = np.concatenate([x.numpy() for x, _ in data.evaluation_dataset(jpeg_files, 24, 3, 5, transform=transform)])
    assert plain.shape == (12, 24, 24, 3)
    decoded = tf.io.decode_jpeg(tf.io.read_file(jpeg_files.paths[7]))
    np.testing.assert_array_equal(plain[7], transform(decoded, tf.zeros([2], tf.int64)).numpy())
    for cache in (True, str(tmp_path / "eval_cache")):
        dataset = data.evaluation_dataset(jpeg_files, 24, 3, 5, transform=transform, cache=cache)
        for _ in range(2):  # First pass fills the cache, the second reads it.
            np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in dataset]), plain)
    assert list(tmp_path.glob("eval_cache*"))


def test_augment_with_a_plain_resize_reproduces_the_default_pipeline():
    # Omniglot with rotations: 1-channel PNGs, rotated before the transform as before the resize.
    files = data.load_omniglot(test_fraction=0.5, seed=0, rotations=True).test
    plain = data.class_balanced_dataset(files, 4, 2, 28, 1, seed=5)
    resized = data.class_balanced_dataset(files, 4, 2, 28, 1, seed=5,
                                          augment=lambda image, seed: transforms.resize(image, 28, 28))
    for (x1, y1), (x2, y2) in zip(plain.take(2), resized.take(2)):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_allclose(x1, x2, atol=1e-6)


# --------------------------------------------------------------------------- affine_transform


def test_affine_transform_without_distortion_is_the_resize():
    image = tf.constant(_smooth_image(40, 30))
    identity = transforms.affine_transform(20, rotation_degrees=0, shear=0, scale=(1, 1), translate=0)
    np.testing.assert_allclose(identity(image, tf.constant([1, 2], tf.int64)).numpy(),
                               transforms.resize(image, 20, 20).numpy(), atol=1e-6)


def test_affine_transform_matches_a_numpy_warp():
    """Every output pixel p samples the resized image at c + A (p - c) + t (bilinear), with A and t
    drawn from the documented uniform ranges by the seed."""
    size, seed = 16, tf.constant([3, 9], tf.int64)
    image = tf.constant(_smooth_image(24, 24, seed=1))
    out = transforms.affine_transform(size, 10, 0.3, (0.8, 1.2), 0.05)(image, seed).numpy()
    resized = transforms.resize(image, size, size).numpy().astype(np.float64)
    u = tf.random.stateless_uniform([7], seed, -1.0, 1.0).numpy().astype(np.float64)
    theta, sx, sy = u[0] * np.pi / 18, u[1] * 0.3, u[2] * 0.3
    zx, zy = 0.8 + (u[3] + 1) / 2 * 0.4, 0.8 + (u[4] + 1) / 2 * 0.4
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    a = rotation @ np.array([[1, sx], [sy, 1]]) @ np.diag([zx, zy])
    c, t = (size - 1) / 2, u[5:7] * 0.05 * size
    expected = np.zeros_like(resized)
    for row in range(size):
        for col in range(size):
            x, y = a @ np.array([col - c, row - c]) + c + t
            x, y = np.clip(x, 0, size - 1), np.clip(y, 0, size - 1)  # edges extended
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            x1, y1 = min(x0 + 1, size - 1), min(y0 + 1, size - 1)
            fx, fy = x - x0, y - y0
            expected[row, col] = ((1 - fy) * ((1 - fx) * resized[y0, x0] + fx * resized[y0, x1])
                                  + fy * ((1 - fx) * resized[y1, x0] + fx * resized[y1, x1]))
    np.testing.assert_allclose(out, expected, atol=2e-3)
    assert not np.allclose(out, resized, atol=0.05)  # the seed's distortion is not negligible


def test_affine_transform_rejects_bad_ranges():
    with pytest.raises(ValueError, match="scale"):
        transforms.affine_transform(16, scale=(1.2, 0.8))
    with pytest.raises(ValueError, match=">= 0"):
        transforms.affine_transform(16, rotation_degrees=-1)
