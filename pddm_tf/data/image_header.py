"""Image sizes read from the encoded header, and the pixel limit that refuses decompression bombs.

A PNG of a few hundred kilobytes can declare 20,000 x 20,000 pixels: decoding it takes seconds and
gigabytes (a 400 MB uint8 image, 1.6 GB once converted to float32). `image_size` reads width and
height from the file's header with TensorFlow ops only (no decoding), so the same check runs in
`tf.data` pipelines, in eager code and inside an exported SavedModel signature, and
`check_pixel_limit` refuses an image over the limit before any decoder sees it.

What is read, per format:

* PNG: the IHDR chunk, which the format requires to come first (width, height: big-endian uint32).
* JPEG: the markers are walked from the start of the file, skipping each segment by its length
  (APPn, DQT, DHT, COM, ...), up to the first frame header SOF0-SOF15 (except DHT, JPG and DAC);
  its height and width (big-endian uint16) are the decoded size. Bytes between segments are
  skipped as libjpeg does; a walk that meets the scan (SOS) or the end (EOI) first, runs off the
  end of the file or takes more than `_JPEG_MAX_STEPS` steps is refused.
* GIF: the logical screen descriptor (little-endian uint16 width, height): the canvas TF's decoder
  allocates its output for. giflib, under TF's decoder, reads every frame's raster at the size its
  own image descriptor declares, all frames before the first is returned: 120 frames of a 3,900 x
  3,900 screen (a 1.5 MB file) cost 1.75 GB and 20 s. So `first_frame` cuts a GIF after its first
  image before any decoder sees it (the library decodes the first frame only, as TF's
  `expand_animations=False` returns), and checks that image's own declared size too.
* BMP: width and height of the BITMAPINFOHEADER (little-endian int32 at bytes 18 and 22; a
  negative height is a top-down bitmap of |height| rows), where TF's decoder reads them. (TF's
  decoder also requires the file to hold every pixel, so a BMP cannot be much larger than its file.)

A file of no known format, or one too short for its header, is an InvalidArgumentError naming the
problem, never a pass.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

#: The default pixel limit (width x height) of decoded images: 16 MP. Read when a pipeline or
#: signature is built (traced), so assigning `pddm_tf.data.image_header.MAX_IMAGE_PIXELS = n` before
#: building one changes the limit of the training loaders (`pddm_tf.data`); an export stores the
#: value it was given (`export_saved_model(max_image_pixels=...)`).
MAX_IMAGE_PIXELS = 16_000_000

#: Leading bytes of the formats `tf.io.decode_image` understands, by format.
FORMAT_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
}
_FORMATS = tuple(FORMAT_SIGNATURES)
# Longest header any format's size is read from (BMP: 26 bytes), and the JPEG walk's window.
_HEADER_BYTES = 32
_JPEG_WINDOW = 16
# A JPEG's header is a handful of segments (APP0/1, DQT, DHT, SOF): the bound only stops a crafted
# file from making the walk long (each step advances >= 1 byte; garbage is skipped 16 bytes a step).
_JPEG_MAX_STEPS = 1024
# JPEG frame headers: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = tuple(m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC))
# Markers without a length field: TEM, RST0-RST7, SOI.
_JPEG_STANDALONE = (0x01, *range(0xD0, 0xD9))
_SOS, _EOI = 0xDA, 0xD9


def image_format(encoded: tf.Tensor) -> tf.Tensor:
    """The format of one file's bytes: scalar tf.string -> scalar int32, the index of its format in
    `FORMAT_SIGNATURES` (0 PNG, 1 JPEG, 2 GIF, 3 BMP) or 4 for none of them."""
    longest = max(len(s) for signatures in FORMAT_SIGNATURES.values() for s in signatures)
    # Padded, so that every prefix lies inside the string (substr refuses a start past the end).
    head = tf.strings.substr(tf.strings.join([encoded, "\0" * longest]), 0, longest)
    index = tf.constant(len(_FORMATS), tf.int32)
    for i in reversed(range(len(_FORMATS))):
        matches = tf.reduce_any([tf.equal(tf.strings.substr(head, 0, len(s)), s)
                                 for s in FORMAT_SIGNATURES[_FORMATS[i]]])
        index = tf.where(matches, i, index)
    return index


def image_size(encoded: tf.Tensor) -> tf.Tensor:
    """(height, width) of one encoded image, read from its header without decoding it.

    Args:
      encoded: scalar tf.string, the bytes of a PNG, JPEG, GIF or BMP file.

    Returns:
      [2] int64: height, width (the size `tf.io.decode_image` would return; for a GIF, that of
      its logical screen, see the module docstring).

    Raises:
      tf.errors.InvalidArgumentError: the bytes are of no known format, or too short for their
        header, or (JPEG) hold no frame header before the image data.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    if tf.executing_eagerly():
        # Eagerly, the JPEG walk's while_loop would run op by op from Python: trace it once instead.
        return _traced_image_size(encoded)
    return _image_size(encoded)


def _image_size(encoded: tf.Tensor) -> tf.Tensor:
    return tf.switch_case(image_format(encoded), [
        lambda: _png_size(encoded), lambda: _jpeg_size(encoded), lambda: _gif_size(encoded),
        lambda: _bmp_size(encoded), lambda: _refuse(f"the bytes are not a {', '.join(_FORMATS[:-1])} or "
                                                    f"{_FORMATS[-1]} file")])


_traced_image_size = tf.function(_image_size, input_signature=[tf.TensorSpec([], tf.string)])


def check_pixel_limit(encoded: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """`encoded`, once its header says width x height <= `max_pixels`: the guard to run before decoding.

    Args:
      encoded: scalar tf.string, the bytes of one image file.
      max_pixels: the limit, >= 1.

    Returns:
      `encoded` (scalar tf.string), with a control dependency on the check.

    Raises:
      tf.errors.InvalidArgumentError: the image declares more than `max_pixels` pixels (the message
        gives its width x height and the limit), or `image_size` cannot read its header.
    """
    _check_limit(max_pixels)
    size = image_size(encoded)
    pixels = size[0] * size[1]
    check = tf.debugging.Assert(pixels <= max_pixels, [tf.strings.format(
        "the image is {} x {} = {} pixels (width x height), over the limit of {} pixels (max_image_pixels); "
        "refused before decoding", (size[1], size[0], pixels, tf.constant(int(max_pixels), tf.int64)))])
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def check_batch_pixel_limit(encoded: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """`check_pixel_limit` for a batch [n] tf.string, naming the first image over the limit.

    The headers must be of known formats (check that first: `image_size` refuses the others).

    Returns:
      `encoded` [n], with a control dependency on the check.
    """
    _check_limit(max_pixels)
    sizes = tf.map_fn(image_size, encoded, fn_output_signature=tf.TensorSpec([2], tf.int64))  # [n, 2]
    pixels = sizes[:, 0] * sizes[:, 1]
    over = pixels > max_pixels
    first = first_true(over)
    # The message's inputs are computed even when the check passes: pad one row so an empty batch gathers too.
    size = tf.gather(tf.concat([sizes, tf.zeros([1, 2], tf.int64)], axis=0), first)
    check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(over)), [tf.strings.format(
        "image {} of the batch (counting from 0) is {} x {} = {} pixels (width x height), over the limit of {} "
        "pixels (max_image_pixels); refused before decoding",
        (first, size[1], size[0], size[0] * size[1], tf.constant(int(max_pixels), tf.int64)))])
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def first_true(mask: tf.Tensor) -> tf.Tensor:
    """Index of the first true element of a [n] bool mask, n when there is none (an empty mask included).

    For error messages about a batch: a plain argmax reduces over an empty batch and fails.
    """
    return tf.argmax(tf.concat([tf.cast(mask, tf.int32), [1]], axis=0), output_type=tf.int32)


def first_frame(encoded: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """The bytes to hand a decoder: a GIF cut after its first image (then its trailer), other formats unchanged.

    The GIF's blocks are walked from its header (extensions and the first image's descriptor, colour
    table and data sub-blocks), a run of sub-blocks of equal length at a time (encoders write 255-byte
    sub-blocks), so the walk costs O(blocks + data / 261,120 bytes) steps, not a step per byte; the
    later frames are never read. TF's decoder returns the first frame of an animation anyway
    (`expand_animations=False`), so the pixels are those of the whole file. A GIF truncated inside its
    first image is returned whole (its decoder then reads what there is).

    Args:
      encoded: scalar tf.string, the bytes of an image file.
      max_pixels: the limit, >= 1, that the first image's own declared width x height must meet (the
        screen size is `check_pixel_limit`'s).

    Returns:
      scalar tf.string.

    Raises:
      tf.errors.InvalidArgumentError: the first image declares more than `max_pixels` pixels, or the walk
        needs more than `_GIF_MAX_STEPS` steps (blocks, or runs of sub-blocks of one length).
    """
    _check_limit(max_pixels)
    encoded = tf.convert_to_tensor(encoded, tf.string)
    limit = tf.constant(int(max_pixels), tf.int64)
    if tf.executing_eagerly():
        return _traced_first_frame(encoded, limit)  # as in `image_size`: the walk runs traced, not op by op
    return _first_frame(encoded, limit)


def _first_frame(encoded: tf.Tensor, limit: tf.Tensor) -> tf.Tensor:
    is_gif = tf.equal(image_format(encoded), _FORMATS.index("GIF"))
    return tf.cond(is_gif, lambda: _gif_first_frame(encoded, limit), lambda: tf.identity(encoded))


_traced_first_frame = tf.function(_first_frame, input_signature=[tf.TensorSpec([], tf.string),
                                                                  tf.TensorSpec([], tf.int64)])


def _check_limit(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
        raise ValueError(f"max_pixels must be an integer >= 1, got {max_pixels!r}")


# --------------------------------------------------------------------------- per format


def _refuse(message: str) -> tf.Tensor:
    """A branch that fails with `message` (InvalidArgumentError); its [2] int64 output is never seen."""
    check = tf.debugging.Assert(tf.constant(False), [tf.constant(message)])
    with tf.control_dependencies([check]):
        return tf.zeros([2], tf.int64)


def _header(encoded: tf.Tensor, name: str, length: int) -> tf.Tensor:
    """The first `length` bytes as [length] int64, after checking the file holds them."""
    size = tf.strings.length(encoded)
    check = tf.debugging.Assert(size >= length, [tf.strings.format(
        f"truncated {name} header: {{}} bytes, the header needs {length}", size)])
    with tf.control_dependencies([check]):
        return _bytes(tf.strings.join([encoded, "\0" * length]), 0, length)


def _bytes(encoded: tf.Tensor, start: tf.Tensor | int, length: int) -> tf.Tensor:
    """Bytes [start, start + length) as [length] int64; the caller makes sure they exist."""
    raw = tf.io.decode_raw(tf.strings.substr(encoded, start, length), tf.uint8)
    return tf.cast(tf.ensure_shape(raw, [length]), tf.int64)


def _big_endian(b: tf.Tensor) -> tf.Tensor:
    value = tf.constant(0, tf.int64)
    for i in range(b.shape[0]):
        value = value * 256 + b[i]
    return value


def _little_endian(b: tf.Tensor) -> tf.Tensor:
    return _big_endian(tf.reverse(b, [0]))


def _int64(value: int) -> tf.Tensor:
    return tf.constant(value, tf.int64)


def _signed32(value: tf.Tensor) -> tf.Tensor:
    return tf.where(value >= 2**31, value - 2**32, value)


def _png_size(encoded: tf.Tensor) -> tf.Tensor:
    head = _header(encoded, "PNG", 24)
    # Bytes 8-15: the first chunk's length and type, which must be IHDR.
    is_ihdr = tf.reduce_all(tf.equal(head[12:16], tf.constant(list(b"IHDR"), tf.int64)))
    check = tf.debugging.Assert(is_ihdr, ["corrupt PNG header: the first chunk is not IHDR"])
    with tf.control_dependencies([check]):
        return tf.stack([_big_endian(head[20:24]), _big_endian(head[16:20])])


def _gif_size(encoded: tf.Tensor) -> tf.Tensor:
    head = _header(encoded, "GIF", 10)
    return tf.stack([_little_endian(head[8:10]), _little_endian(head[6:8])])


def _bmp_size(encoded: tf.Tensor) -> tf.Tensor:
    head = _header(encoded, "BMP", 26)
    width = tf.abs(_signed32(_little_endian(head[18:22])))
    height = tf.abs(_signed32(_little_endian(head[22:26])))
    return tf.stack([height, width])


# JPEG walk states.
_SCANNING, _FOUND, _NO_FRAME, _BAD_LENGTH = 0, 1, 2, 3
_JPEG_ERRORS = ("", "", "JPEG without a frame header (SOF) before its image data", "corrupt JPEG: a segment "
                "length below 2")


def _jpeg_size(encoded: tf.Tensor) -> tf.Tensor:
    size = tf.cast(tf.strings.length(encoded), tf.int64)
    padding = "\0" * _JPEG_WINDOW
    sof = tf.constant(_JPEG_SOF, tf.int64)
    standalone = tf.constant(_JPEG_STANDALONE, tf.int64)

    def step(pos, state, height, width):
        # A window at pos, zero-padded past the end (whose bytes then read as garbage).
        w = _bytes(tf.strings.join([tf.strings.substr(encoded, pos, _JPEG_WINDOW), padding]), 0, _JPEG_WINDOW)
        marker = w[1]
        is_marker = tf.logical_and(tf.equal(w[0], 0xFF), tf.logical_and(marker != 0xFF, marker != 0x00))
        is_sof = tf.logical_and(is_marker, tf.reduce_any(tf.equal(marker, sof)))
        stops = tf.logical_and(is_marker, tf.logical_or(tf.equal(marker, _SOS), tf.equal(marker, _EOI)))
        length = w[2] * 256 + w[3]
        has_length = tf.logical_and(is_marker, tf.logical_not(tf.reduce_any(tf.equal(marker, standalone))))
        bad_length = tf.logical_and(tf.logical_and(has_length, tf.logical_not(tf.logical_or(is_sof, stops))),
                                    length < 2)
        # Not at a marker: move to the next 0xFF in the window (a fill byte, FF00 or garbage: one byte on).
        ff = tf.cast(tf.equal(w[1:], 0xFF), tf.int32)
        to_next_ff = tf.where(tf.reduce_any(ff > 0), tf.argmax(ff, output_type=tf.int64) + 1, _int64(_JPEG_WINDOW))
        advance = tf.where(has_length, 2 + length, tf.where(is_marker, _int64(2), to_next_ff))
        new_state = tf.where(is_sof, _int64(_FOUND), tf.where(stops, _int64(_NO_FRAME), tf.where(
            bad_length, _int64(_BAD_LENGTH), _int64(_SCANNING))))
        return (pos + tf.where(tf.equal(new_state, _SCANNING), advance, _int64(0)), new_state,
                tf.where(is_sof, w[5] * 256 + w[6], height), tf.where(is_sof, w[7] * 256 + w[8], width))

    zero = tf.constant(0, tf.int64)
    pos, state, height, width = tf.while_loop(
        lambda pos, state, *_: tf.logical_and(tf.equal(state, _SCANNING), pos < size),
        step, (tf.constant(2, tf.int64), tf.constant(_SCANNING, tf.int64), zero, zero),
        maximum_iterations=_JPEG_MAX_STEPS)
    # A frame header runs 9 bytes from its marker: it must lie inside the file.
    found = tf.logical_and(tf.equal(state, _FOUND), pos + 9 <= size)
    message = tf.where(
        tf.equal(state, _SCANNING),
        tf.where(pos < size, f"JPEG without a frame header (SOF) in its first {_JPEG_MAX_STEPS} segments",
                 "truncated JPEG: no frame header (SOF) before the end of the file"),
        tf.where(tf.equal(state, _FOUND), "truncated JPEG: the file ends inside its frame header (SOF)",
                 tf.gather(tf.constant(_JPEG_ERRORS), state)))
    check = tf.debugging.Assert(found, [message])
    with tf.control_dependencies([check]):
        return tf.stack([height, width])


# GIF walk states: at a block; in the data sub-blocks of an extension or of the first image; done.
_BLOCK, _EXTENSION, _IMAGE, _CUT, _AS_IS = 0, 1, 2, 3, 4
# Sub-blocks checked at once for a run of one length: 1,024 x 256 bytes a step for a 255-byte encoder.
_GIF_RUN = 1024
# A still image's header is a few extensions; its data, 94 runs at most for 16 MP of 12-bit codes.
# The bound stops a crafted file (sub-blocks of changing lengths) from making the walk long.
_GIF_MAX_STEPS = 4096


def _colour_table(packed: tf.Tensor) -> tf.Tensor:
    """Bytes of the colour table that a packed field announces: 3 x 2^(n + 1) when its top bit is set."""
    return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(_int64(2), packed % 8), _int64(0))


def _gif_first_frame(encoded: tf.Tensor, limit: tf.Tensor) -> tf.Tensor:
    """`first_frame` of a GIF (see there)."""
    head = _header(encoded, "GIF", 13)
    size = tf.cast(tf.strings.length(encoded), tf.int64)
    raw = tf.io.decode_raw(encoded, tf.uint8)  # [size], the file once

    def byte(position):  # reads 0 past the end, where the walk stops anyway
        inside = tf.logical_and(position >= 0, position < size)
        return tf.where(inside, tf.cast(tf.gather(raw, tf.clip_by_value(position, 0, size - 1)), tf.int64), 0)

    run_steps = tf.range(_GIF_RUN, dtype=tf.int64)

    def step(pos, state, width, height):
        b = byte(pos)
        # At a block: an extension (0x21, a label, sub-blocks), an image (0x2C, a 9-byte descriptor, a
        # colour table, the LZW code size, sub-blocks) or anything else (the trailer: no image to cut).
        is_extension, is_image = tf.equal(b, 0x21), tf.equal(b, 0x2C)
        block_pos = tf.where(is_extension, pos + 2, tf.where(is_image, pos + 11 + _colour_table(byte(pos + 9)), pos))
        block_state = tf.where(is_extension, _int64(_EXTENSION), tf.where(is_image, _int64(_IMAGE), _int64(_AS_IS)))
        # In sub-blocks (a length b, then b bytes; b = 0 ends them): skip the run of those of length b.
        starts = pos + (b + 1) * run_steps
        same = tf.logical_and(starts < size, tf.equal(tf.cast(tf.gather(raw, tf.minimum(starts, size - 1)),
                                                              tf.int64), b))
        run = tf.where(tf.reduce_all(same), _int64(_GIF_RUN), tf.argmin(tf.cast(same, tf.int32), output_type=tf.int64))
        ends = tf.equal(b, 0)
        chain_pos = tf.where(ends, pos + 1, pos + (b + 1) * run)
        chain_state = tf.where(ends, tf.where(tf.equal(state, _EXTENSION), _int64(_BLOCK), _int64(_CUT)), state)
        at_block = tf.equal(state, _BLOCK)
        new_pos = tf.where(at_block, block_pos, chain_pos)
        new_state = tf.where(at_block, block_state, chain_state)
        # Past the end inside the first image: a truncated file, left whole to its decoder.
        new_state = tf.where(tf.logical_and(new_pos >= size, tf.not_equal(new_state, _CUT)), _int64(_AS_IS), new_state)
        found = tf.logical_and(at_block, is_image)
        return (new_pos, new_state, tf.where(found, byte(pos + 5) + 256 * byte(pos + 6), width),
                tf.where(found, byte(pos + 7) + 256 * byte(pos + 8), height))

    start = 13 + _colour_table(head[10])
    zero = _int64(0)
    pos, state, width, height = tf.while_loop(
        lambda pos, state, *_: state < _CUT, step,
        (start, tf.where(start < size, _int64(_BLOCK), _int64(_AS_IS)), zero, zero),
        maximum_iterations=_GIF_MAX_STEPS)
    walked = tf.debugging.Assert(state >= _CUT, [
        f"GIF with more than {_GIF_MAX_STEPS} blocks or runs of data sub-blocks before the end of its first "
        "image; refused before decoding"])
    small = tf.debugging.Assert(width * height <= limit, [tf.strings.format(
        "the first image of the GIF is {} x {} = {} pixels (width x height), over the limit of {} pixels "
        "(max_image_pixels); refused before decoding", (width, height, width * height, limit))])
    with tf.control_dependencies([walked, small]):
        cut = tf.strings.join([tf.strings.substr(encoded, _int64(0), pos), ";"])  # ";": the GIF trailer
        return tf.where(tf.equal(state, _CUT), cut, encoded)
