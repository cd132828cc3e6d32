"""Decoding image files for the network with TensorFlow ops (shared by training, evaluation and the
SavedModel): format check, the pixel limit, rotation, antialiased resize to [0, 1]."""

from __future__ import annotations

import re
from collections.abc import Callable

import tensorflow as tf

from pddm_tf.data import image_header

# Leading bytes of the formats tf.io.decode_image understands: PNG, JPEG, GIF, BMP.
MAGIC_NUMBERS = tuple(s for signatures in image_header.FORMAT_SIGNATURES.values() for s in signatures)


def decode_image(
    encoded: tf.Tensor, image_size: int, channels: int, rotation: tf.Tensor | int = 0,
    max_pixels: int | None = None,
) -> tf.Tensor:
    """Decodes one image file's bytes for the network.

    Pure TF ops, so the SavedModel serving signature reuses it unchanged.

    Args:
      encoded: scalar tf.string, the bytes of a PNG, JPEG, GIF (first frame) or BMP file.
      image_size: side s of the square output; the image is resized without keeping its
        aspect ratio (bilinear, antialiased so that downscaling does not alias).
      channels: 1 (grayscale) or 3 (RGB) output channels c.
      rotation: number k of 90-degree counter-clockwise rotations, applied before resizing.
      max_pixels: images whose header declares more pixels (width x height) are refused before
        decoding (`image_header.check_pixel_limit`), as is a GIF whose first image does (only that
        image is decoded: `image_header.first_frame`); None: `image_header.MAX_IMAGE_PIXELS` as it
        is when this runs (or is traced).

    Returns:
      [s, s, c] float32 in [0, 1].

    Raises:
      tf.errors.InvalidArgumentError: an image over the pixel limit (the message gives its size and
        the limit), of no known format, or that its decoder cannot read.
    """
    pixels = _decode_pixels(encoded, channels, rotation, max_pixels)
    return _resize(pixels, image_size)


def decode_images(encoded: tf.Tensor, image_size: int, channels: int,
                  transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
                  max_pixels: int | None = None) -> tf.Tensor:
    """Decodes a batch of image files: [n] tf.string -> [n, s, s, c] float32 in [0, 1].

    Without `transform`, each image is `decode_image`d (plain resize); with one (a deterministic
    evaluation transform such as `transforms.eval_transform(s)`), it is applied to the full-size
    decoded image, as `evaluation_dataset(..., transform=...)` does.

    A batch holding bytes of no known image format, or an image whose header declares more than
    `max_pixels` pixels (None: `image_header.MAX_IMAGE_PIXELS`), fails as a whole, before any image
    is decoded, with an InvalidArgumentError naming the index of the first such image ("image 2 of
    the batch ...").
    """
    limit = _pixel_limit(max_pixels)

    def one(image_bytes: tf.Tensor) -> tf.Tensor:
        # The whole batch's headers are checked below, before the first decode.
        pixels = _decode_pixels(image_bytes, channels, max_pixels=limit, check_header=False)
        if transform is None:
            return _resize(pixels, image_size)
        image = transform(pixels, tf.zeros([2], tf.int64))
        return tf.ensure_shape(tf.cast(image, tf.float32), [image_size, image_size, channels])

    known = image_format_known(encoded)
    first_unknown = image_header.first_true(tf.logical_not(known))
    check = tf.debugging.Assert(tf.reduce_all(known), [tf.strings.format(
        "image {} of the batch (counting from 0) is not a PNG, JPEG, GIF or BMP file", first_unknown)])
    with tf.control_dependencies([check]):
        encoded = image_header.check_batch_pixel_limit(tf.identity(encoded), limit)
    return tf.map_fn(one, encoded,
                     fn_output_signature=tf.TensorSpec([image_size, image_size, channels], tf.float32))


def image_format_known(encoded: tf.Tensor) -> tf.Tensor:
    """Whether each of a batch of files starts like a PNG, JPEG, GIF or BMP file: [n] tf.string -> [n] bool.

    The signatures are those that folder datasets accept (`MAGIC_NUMBERS`). A file can start
    right and still be damaged further on; that one fails in its decoder.
    """
    length = max(len(magic) for magic in MAGIC_NUMBERS)
    # Padded so that every prefix below lies inside the string (substr refuses one past the end).
    prefixes = tf.strings.substr(tf.strings.join([encoded, tf.fill(tf.shape(encoded), "\0" * length)]), 0, length)
    known = tf.zeros(tf.shape(encoded), tf.bool)
    for magic in MAGIC_NUMBERS:
        known |= tf.equal(tf.strings.substr(prefixes, 0, len(magic)), magic)
    return known


def read_image(path: tf.Tensor, image_size: int, channels: int, rotation: tf.Tensor | int = 0,
               max_pixels: int | None = None, transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
               seed: tf.Tensor | None = None) -> tf.Tensor:
    """Reads and decodes one image file: scalar path -> [s, s, c] float32 (the one image reader of
    the training, evaluation and embedding pipelines).

    Without `transform`: `decode_image` (rotated, resized to s x s, in [0, 1]). With one (a
    `pddm_tf.data.transforms.Transform`, e.g. an augmentation or `transforms.eval_transform(s)`):
    `transform(full-size decoded image rotated, seed)`, checked to be [s, s, c]; `seed` is its
    stateless seed [2] int64 (None: zeros, for a deterministic evaluation transform). Either way
    images over the pixel limit are refused as in `decode_image`.
    """
    if transform is None:
        return decode_image(tf.io.read_file(path), image_size, channels, rotation, max_pixels)
    seed = tf.zeros([2], tf.int64) if seed is None else seed
    image = transform(_decode_pixels(tf.io.read_file(path), channels, rotation, max_pixels), seed)
    return tf.ensure_shape(tf.cast(image, tf.float32), [image_size, image_size, channels])


# What TensorFlow wraps an op's message in: the failing function, op and node names.
_WRAPPING = re.compile(r"\{\{function_node [^}]*\}\}|\[\[\{\{node [^}]*\}\}\]\]|\[Op:[^\]]*\](\s*name:.*)?")
# An Assert's message: eagerly "... Summarized data: b'<message>'", in a graph "assertion failed: [<message>]".
_ASSERTION = re.compile(r"Summarized data: b(['\"])(.*)\1\s*$|assertion failed: \[(.*?)\]\s*(?:\[\[|$)", re.S)


def decode_error_reason(error: tf.errors.OpError) -> str:
    """Why an image was refused or could not be decoded, in one line: the message of this module's
    checks (e.g. "the image is 20000 x 20000 = 400000000 pixels ..."), or the decoder's own ("Invalid
    PNG data, size 852"), without TensorFlow's wrapping ("Graph execution error:", the Python lines
    the failing op was created at, node and function names, "Expected 'tf.Tensor(False, ...)' to be true").
    """
    text = error.message
    match = _ASSERTION.search(text)
    if match:
        reason = match.group(2) if match.group(2) is not None else match.group(3)
    else:
        lines = [line.strip() for line in text.splitlines()]
        kept = [line for line in lines if line and not line.startswith(("Graph execution error", "Detected at node",
                                                                        "File \"", "Detected unsupported"))]
        reason = kept[-1] if kept else ""
    reason = " ".join(_WRAPPING.sub(" ", reason).replace("\\'", "'").split())
    return reason or type(error).__name__


def _pixel_limit(max_pixels: int | None) -> int:
    """The pixel limit to apply: `max_pixels`, or the module default `image_header.MAX_IMAGE_PIXELS`."""
    return image_header.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels


def _resize(pixels: tf.Tensor, image_size: int) -> tf.Tensor:
    """[h, w, c] uint8 -> [s, s, c] float32 in [0, 1]: `decode_image` after decoding."""
    image = tf.image.convert_image_dtype(pixels, tf.float32)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
    # The resampling weights sum to 1 only up to float rounding: keep the promised range.
    return tf.clip_by_value(image, 0.0, 1.0)


def _decode(encoded: tf.Tensor, channels: int) -> tf.Tensor:
    """Scalar file bytes (a GIF cut to its first frame) -> [h, w, channels] uint8/uint16."""
    return tf.io.decode_image(encoded, channels=channels, expand_animations=False)


def _decode_pixels(encoded: tf.Tensor, channels: int, rotation: tf.Tensor | int = 0,
                   max_pixels: int | None = None, check_header: bool = True) -> tf.Tensor:
    """Scalar file bytes -> [h, w, c] uint8 at full size, rotated by k x 90 degrees
    counter-clockwise: `decode_image` before its resize. The header is first checked against
    `max_pixels` (None: `image_header.MAX_IMAGE_PIXELS`; `check_header=False`: the caller has checked
    it), then a GIF is cut to its first frame (`image_header.first_frame`, which checks that frame's
    size): giflib would otherwise read every frame before TF returns the first."""
    limit = _pixel_limit(max_pixels)
    if check_header:
        encoded = image_header.check_pixel_limit(encoded, limit)
    encoded = image_header.first_frame(encoded, limit)
    if channels == 1:
        # TF's GIF and BMP decoders only emit RGB(A): decode those as RGB, then convert.
        is_rgb_only = tf.logical_or(
            tf.strings.substr(encoded, 0, 3) == "GIF", tf.strings.substr(encoded, 0, 2) == "BM"
        )
        image = tf.cond(
            is_rgb_only,
            lambda: tf.image.rgb_to_grayscale(_decode(encoded, channels=3)),
            lambda: _decode(encoded, channels=1),
        )
    else:
        image = _decode(encoded, channels)
    return _rot90(image, rotation)


def _rot90(image: tf.Tensor, turns: tf.Tensor | int) -> tf.Tensor:
    """[h, w, c] -> the image rotated by `turns` x 90 degrees counter-clockwise (`tf.image.rot90`).

    The quarter turns gather pixels instead of transposing: with oneDNN's kernels on (TensorFlow's
    default on CPUs with AVX-512), a transpose of any tensor but float32 logs an ERROR line ("oneDNN
    supports DT_UINT8 only on platforms with AVX-512", seen on an AMD EPYC that has AVX-512) in the
    middle of a quiet run; gathers and reversals go to TensorFlow's own kernels.
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    rows, columns = tf.range(w)[:, None], tf.range(h)[None, :]  # output [w, h] coordinates

    def quarter(source: tf.Tensor) -> tf.Tensor:  # source: [w, h] flat input positions
        flat = tf.reshape(image, tf.stack([h * w, shape[2]]))
        return tf.reshape(tf.gather(flat, tf.reshape(source, [-1])), tf.stack([w, h, shape[2]]))

    return tf.switch_case(tf.math.floormod(tf.cast(turns, tf.int32), 4), [
        lambda: image,
        lambda: quarter(columns * w + (w - 1 - rows)),  # out[i, j] = in[j, w - 1 - i]
        lambda: tf.reverse(image, [0, 1]),
        lambda: quarter((h - 1 - columns) * w + rows),  # out[i, j] = in[h - 1 - j, i]
    ])
