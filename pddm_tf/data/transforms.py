"""Image transforms of the papers' input pipeline: random resized crop + flip, resize + centre crop.

A *transform* maps one decoded image and a per-image stateless seed to the network input:

    transform(image [h, w, c] uint8/uint16 or float32 in [0, 1], seed [2] int64) -> [s, s, c] float32 in [0, 1]

`pddm_tf.data.class_balanced_dataset(..., augment=train_transform(224))` and
`pddm_tf.data.evaluation_dataset(..., transform=eval_transform(224))` apply them to every
image; the seed is derived from the dataset's seed and the image's position in the stream,
so a run is reproducible whatever the decoding parallelism. Every random op here is a
stateless one: the same (image, seed) always gives the same output.

Outputs stay in [0, 1]: the backbones apply their own preprocessing (mean/std, [-1, 1], ...)
inside the model, so that the exported SavedModel needs nothing but these pixels.

The standard recipes (Inception / "A Metric Learning Reality Check"; the Divide-and-Conquer
code uses the same with scale (0.08, 1)):

- training: a random crop covering a fraction in `scale` = (0.16, 1) of the image area with
  aspect ratio (width / height) log-uniform in `ratio` = (3/4, 4/3), resized to s x s, then a
  horizontal flip with probability 1/2 (`train_transform`);
- evaluation: the shorter side resized to `resize_size` (256 for s = 224, i.e. s * 8/7),
  then the central s x s crop (`eval_transform`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

Transform = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
"""(image [h, w, c], seed [2] int64) -> [s, s, c] float32 in [0, 1]."""

DEFAULT_SCALE = (0.16, 1.0)
DEFAULT_RATIO = (3 / 4, 4 / 3)
# Evaluation resizes the shorter side to image_size * 256 / 224 before the centre crop.
_RESIZE_FACTOR = 256 / 224


def resize(image: tf.Tensor, height: int | tf.Tensor, width: int | tf.Tensor) -> tf.Tensor:
    """[h, w, c] image -> [height, width, c] float32 in [0, 1].

    Bilinear with antialiasing (so that downscaling does not alias), as
    `pddm_tf.data.decode_image` resizes: no aspect ratio is kept.
    """
    resized = tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)
    return _unit_range(resized, image.dtype)


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
    """[h, w, c] image -> [h', w', c] float32 in [0, 1] with min(h', w') = size.

    The aspect ratio is kept: the longer side becomes round(longer * size / shorter).
    """
    height, width = _shorter_side_shape(image, size)
    return resize(image, height, width)


def resized_center_crop(image: tf.Tensor, resize_size: int, size: int) -> tf.Tensor:
    """`center_crop(resize_shorter_side(image, resize_size), size)` in one resampling pass.

    Only the size x size kept pixels are interpolated (same antialiased bilinear kernel,
    shifted by the crop offset), instead of the whole resized image: about 1.7x fewer
    pixels for 256 -> 224 on a 4:3 image. Equal to the two-step result up to float
    rounding (below 1e-4). [h, w, c] -> [size, size, c] float32 in [0, 1].
    """
    if resize_size < size:
        raise ValueError(f"resize_size ({resize_size}) must be >= the crop size ({size})")
    height, width = _shorter_side_shape(image, resize_size)
    # The scales tf.image.resize would use; the translation shifts the samples by the crop offset.
    scale = tf.cast(tf.stack([height, width]), tf.float32) / tf.cast(tf.shape(image)[:2], tf.float32)
    offset = tf.stack([(height - size) // 2, (width - size) // 2])
    crop = tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=[size, size], scale=scale,
        translation=-tf.cast(offset, tf.float32), kernel_type="triangle", antialias=True,
    )[0]
    return _unit_range(tf.ensure_shape(crop, [size, size, image.shape[-1]]), image.dtype)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The central [size, size, c] window of an [h, w, c] image (h, w >= size), same dtype.

    The window starts at row (h - size) // 2 and column (w - size) // 2.
    """
    shape = tf.shape(image)
    check = tf.debugging.assert_greater_equal(
        tf.reduce_min(shape[:2]), size, message=f"center_crop: the image is smaller than {size} pixels"
    )
    with tf.control_dependencies([check]):
        top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
    crop = image[top : top + size, left : left + size]
    return tf.ensure_shape(crop, [size, size, image.shape[-1]])


def random_crop_window(
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    attempts: int = 10,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Samples the window of `random_resized_crop` in an image of `height` x `width` pixels.

    Draws `attempts` candidates at once: area fraction uniform in `scale`, aspect ratio
    (width / height) log-uniform in `ratio`, sides rounded to whole pixels; the first that
    fits inside the image is placed at a uniformly random position. If none fits (a very
    elongated image), the largest centred window whose aspect ratio is clamped into `ratio`.

    Returns:
      (top, left, crop_height, crop_width), int32 scalars.
    """
    area_seed, ratio_seed, top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h * w * tf.random.stateless_uniform([attempts], area_seed, scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform([attempts], ratio_seed, math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    crop_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (crop_w >= 1) & (crop_h >= 1) & (crop_w <= width) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32))  # 0 when none fits: replaced below.
    # Fallback: clamp the image's own aspect ratio into `ratio`, centred.
    image_ratio = w / h
    fallback_w = tf.where(
        image_ratio > ratio[1], tf.cast(tf.round(h * ratio[1]), tf.int32), tf.cast(width, tf.int32)
    )
    fallback_h = tf.where(
        image_ratio < ratio[0], tf.cast(tf.round(w / ratio[0]), tf.int32), tf.cast(height, tf.int32)
    )
    found = tf.reduce_any(fits)
    crop_h = tf.where(found, crop_h[first], tf.clip_by_value(fallback_h, 1, height))
    crop_w = tf.where(found, crop_w[first], tf.clip_by_value(fallback_w, 1, width))
    # Offsets uniform over the valid positions; maxval is exclusive.
    top_random = tf.random.stateless_uniform([], top_seed, 0, height - crop_h + 1, dtype=tf.int32)
    left_random = tf.random.stateless_uniform([], left_seed, 0, width - crop_w + 1, dtype=tf.int32)
    top = tf.where(found, top_random, (height - crop_h) // 2)
    left = tf.where(found, left_random, (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def random_resized_crop(
    image: tf.Tensor,
    size: int,
    seed: tf.Tensor,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    attempts: int = 10,
) -> tf.Tensor:
    """Inception-style random resized crop: [h, w, c] image -> [size, size, c] float32 in [0, 1].

    The window is drawn by `random_crop_window` (area fraction in `scale`, aspect ratio in
    `ratio`), cut out in the input dtype (cheaper than converting the whole image first) and
    resized to size x size by `resize`. With scale=(1, 1) and ratio=(1, 1) on a square
    image the window is the whole image: the output is `resize(image, size, size)`.

    Args:
      image: [h, w, c] decoded image, integer (full range) or float in [0, 1].
      size: output side s.
      seed: [2] int32/int64 stateless seed; the same seed gives the same window.
      scale: (min, max) fraction of the image area the window covers, 0 < min <= max <= 1.
      ratio: (min, max) window width / height, 0 < min <= max.
      attempts: candidate windows drawn before the centred fallback.
    """
    _check_range("scale", scale, upper=1.0)
    _check_range("ratio", ratio, upper=None)
    shape = tf.shape(image)
    top, left, crop_h, crop_w = random_crop_window(shape[0], shape[1], seed, scale, ratio, attempts)
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([crop_h, crop_w, -1]))
    crop.set_shape([None, None, image.shape[-1]])
    return resize(crop, size, size)


def train_transform(
    image_size: int,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    flip: bool = True,
) -> Transform:
    """The training augmentation: `random_resized_crop` to image_size, then (if `flip`) a
    horizontal flip with probability 1/2. Returns a `Transform`: (image, seed [2]) -> [s, s, c]."""
    _check_range("scale", scale, upper=1.0)
    _check_range("ratio", ratio, upper=None)

    def transform(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = random_resized_crop(image, image_size, crop_seed, scale, ratio)
        return tf.image.stateless_random_flip_left_right(image, flip_seed) if flip else image

    return transform


def affine_transform(
    image_size: int,
    rotation_degrees: float = 10.0,
    shear: float = 0.3,
    scale: tuple[float, float] = (0.8, 1.2),
    translate: float = 0.05,
) -> Transform:
    """Small random affine distortions for characters and other drawn shapes (Koch et al., 2015).

    The image is resized to image_size x image_size (`resize`), then warped about its centre:
    an output pixel p samples the resized image at c + A (p - c) + t (bilinear, edges
    extended), with A = rotation(theta) @ shear(s_x, s_y) @ diag(z_x, z_y):
    theta ~ U(-rotation_degrees, rotation_degrees) degrees, s_x, s_y ~ U(-shear, shear),
    z_x, z_y ~ U(scale), and t ~ U(-translate, translate) x image_size per axis. Koch et al.
    draw theta in +-10 degrees, shears in +-0.3, scales in [0.8, 1.2] and shifts of +-2 of 105
    pixels; no flip (a mirrored character is another character). Warping the small resized
    image instead of the full one costs (s / h)^2 as much.

    Returns a `Transform`: (image [h, w, c], seed [2]) -> [s, s, c] float32 in [0, 1].
    """
    _check_range("scale", scale, upper=None)
    if rotation_degrees < 0 or shear < 0 or translate < 0:
        raise ValueError(f"rotation_degrees, shear and translate must be >= 0, got "
                         f"{rotation_degrees}, {shear}, {translate}")
    center = (image_size - 1) / 2.0

    def transform(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        resized = resize(image, image_size, image_size)
        u = tf.random.stateless_uniform([7], seed, -1.0, 1.0)
        theta = u[0] * (rotation_degrees * math.pi / 180.0)
        shear_x, shear_y = u[1] * shear, u[2] * shear
        zoom_x = scale[0] + (u[3] + 1.0) / 2.0 * (scale[1] - scale[0])
        zoom_y = scale[0] + (u[4] + 1.0) / 2.0 * (scale[1] - scale[0])
        shift = u[5:7] * (translate * image_size)
        cos, sin = tf.cos(theta), tf.sin(theta)
        # A = R @ S @ Z on (x, y) column vectors, S = [[1, shear_x], [shear_y, 1]].
        a00 = (cos - sin * shear_y) * zoom_x
        a01 = (cos * shear_x - sin) * zoom_y
        a10 = (sin + cos * shear_y) * zoom_x
        a11 = (sin * shear_x + cos) * zoom_y
        # Input point = A p + (c - A c + t), in ImageProjectiveTransform's [a0 a1 a2 b0 b1 b2 0 0] form.
        offset_x = center - (a00 * center + a01 * center) + shift[0]
        offset_y = center - (a10 * center + a11 * center) + shift[1]
        matrix = tf.stack([a00, a01, offset_x, a10, a11, offset_y, 0.0, 0.0])[None]
        warped = tf.raw_ops.ImageProjectiveTransformV3(
            images=resized[None], transforms=matrix, output_shape=[image_size, image_size],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")[0]
        return tf.clip_by_value(tf.ensure_shape(warped, [image_size, image_size, image.shape[-1]]), 0.0, 1.0)

    return transform


def eval_transform(image_size: int, resize_size: int | None = None) -> Transform:
    """The evaluation transform: `resize_shorter_side` to `resize_size`, then `center_crop` to
    image_size, fused into one resampling (`resized_center_crop`). `resize_size` defaults to
    round(image_size * 256 / 224) (256 for 224). Deterministic: the seed argument of the
    returned `Transform` is ignored."""
    if resize_size is None:
        resize_size = round(image_size * _RESIZE_FACTOR)
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")

    def transform(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        del seed  # Deterministic.
        return resized_center_crop(image, resize_size, image_size)

    return transform


def _unit_range(resampled: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Float32 resampled pixels of an image of `dtype` -> [0, 1].

    Integer images are resampled as they are and scaled afterwards (resampling is linear):
    converting the smaller output is cheaper than converting the whole input. The clip keeps
    the promised range, since the resampling weights sum to 1 only up to float rounding.
    """
    if dtype.is_integer:
        resampled = resampled * (1.0 / dtype.max)
    return tf.clip_by_value(tf.cast(resampled, tf.float32), 0.0, 1.0)


def _shorter_side_shape(image: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(h', w') int32 of `resize_shorter_side`: the shorter side set to `size` exactly (rounding
    size * shorter / shorter could miss it by one), the longer one scaled and rounded."""
    shape = tf.cast(tf.shape(image)[:2], tf.float64)
    landscape = shape[0] <= shape[1]
    factor = size / tf.reduce_min(shape)
    height = tf.where(landscape, size, tf.cast(tf.round(shape[0] * factor), tf.int32))
    width = tf.where(landscape, tf.cast(tf.round(shape[1] * factor), tf.int32), size)
    return height, width


def _check_range(name: str, bounds: tuple[float, float], upper: float | None) -> None:
    low, high = bounds
    if not (0 < low <= high and (upper is None or high <= upper)):
        limit = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < min <= max{limit}, got {bounds}")
