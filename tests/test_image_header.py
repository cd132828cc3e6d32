"""Image sizes read from headers (`pddm_tf.data.image_header`), against the sizes the encoders were given and
TF's own decoders; and the pixel limit of the training loaders."""

import io
import logging
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pddm_tf import data
from pddm_tf.data import image_header
from pddm_tf.data.image_header import check_pixel_limit, image_size

# (width, height): odd sizes, a single row and a single column.
SIZES = [(37, 21), (1, 300), (257, 1)]


def _pil(fmt: str, width: int, height: int, mode: str = "RGB", **options) -> bytes:
    rng = np.random.default_rng(width * 1000 + height)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _with_app1_holding_a_fake_frame_header(jpeg: bytes) -> bytes:
    """An APP1 segment (as EXIF thumbnails are) right after SOI, whose payload holds a SOF0 of 4000 x 3000:
    a reader that does not skip segments by their length would take it for the frame."""
    fake_sof = bytes([0xFF, 0xC0, 0x00, 0x11, 0x08]) + struct.pack(">HH", 3000, 4000) + b"\x03" + bytes(9)
    return jpeg[:2] + _segment(0xE1, b"Exif\0\0" + fake_sof * 3 + bytes(700)) + jpeg[2:]


def _with_fill_and_garbage(jpeg: bytes) -> bytes:
    """Fill bytes (0xFF repeated) and 20 stray bytes before the second marker: libjpeg skips them."""
    app0_end = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:app0_end] + bytes(range(1, 21)) + b"\xff\xff\xff" + jpeg[app0_end:]


def _cases():
    """(name, encoded bytes, (height, width) the encoder was given)."""
    cases = []
    for width, height in SIZES:
        expected = (height, width)
        cases += [(f"png-rgb-{width}x{height}", _pil("PNG", width, height), expected),
                  (f"png-gray-{width}x{height}", _pil("PNG", width, height, "L"), expected),
                  (f"png-rgba-{width}x{height}", _pil("PNG", width, height, "RGBA"), expected),
                  (f"jpeg-{width}x{height}", _pil("JPEG", width, height), expected),
                  (f"jpeg-progressive-{width}x{height}", _pil("JPEG", width, height, progressive=True), expected),
                  (f"jpeg-gray-restarts-{width}x{height}", _pil("JPEG", width, height, "L", restart_marker_blocks=1,
                                                                  comment=b"c" * 300), expected),
                  (f"gif-{width}x{height}", _pil("GIF", width, height), expected),
                  (f"bmp-{width}x{height}", _pil("BMP", width, height), expected)]
    cases += [("jpeg-app1-fake-sof", _with_app1_holding_a_fake_frame_header(_pil("JPEG", 50, 40)), (40, 50)),
              ("jpeg-fill-and-garbage", _with_fill_and_garbage(_pil("JPEG", 33, 17)), (17, 33))]
    # TensorFlow's own encoders.
    pixels = np.random.default_rng(0).integers(0, 256, (23, 45, 3), dtype=np.uint8)
    cases += [("tf-png", tf.io.encode_png(pixels).numpy(), (23, 45)),
              ("tf-jpeg", tf.io.encode_jpeg(pixels).numpy(), (23, 45)),
              ("tf-jpeg-progressive", tf.io.encode_jpeg(pixels, progressive=True).numpy(), (23, 45))]
    return cases


CASES = _cases()


def _top_down(bmp: bytes) -> bytes:
    """The BMP with its height field negated (a top-down bitmap: rows stored from the top)."""
    height = struct.unpack("<i", bmp[22:26])[0]
    return bmp[:22] + struct.pack("<i", -height) + bmp[26:]


def test_sizes_equal_the_encoders_and_tf_decoders():
    for name, encoded, expected in CASES:
        decoded = tf.io.decode_image(encoded, expand_animations=False).shape[:2]
        assert tuple(decoded) == expected, name  # the independent reference agrees with the encoder
        assert tuple(image_size(tf.constant(encoded)).numpy()) == expected, name


def test_sizes_inside_a_tf_data_pipeline():
    """Traced into a tf.data graph (as in training) rather than the eager path's own tf.function."""
    encoded = [case[1] for case in CASES]
    expected = np.array([case[2] for case in CASES])
    sizes = np.stack(list(tf.data.Dataset.from_tensor_slices(encoded).map(image_size).as_numpy_iterator()))
    np.testing.assert_array_equal(sizes, expected)


def test_a_top_down_bmp_has_its_height_as_a_positive_size():
    bmp = _top_down(_pil("BMP", 13, 9))
    assert struct.unpack("<i", bmp[22:26])[0] == -9
    assert tuple(tf.io.decode_bmp(bmp).shape[:2]) == (9, 13)  # TF decodes it: the test file is a valid BMP
    assert tuple(image_size(tf.constant(bmp)).numpy()) == (9, 13)


def test_the_gif_size_is_that_of_its_logical_screen():
    """An animated GIF whose frames PIL crops to their changed area: the screen is the size TF decodes."""
    frames = [Image.new("RGB", (60, 30), (0, 0, 0)), Image.new("RGB", (60, 30), (0, 0, 0))]
    frames[1].paste((255, 0, 0), (5, 5, 15, 10))
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], optimize=False)
    gif = buffer.getvalue()
    assert tuple(image_size(tf.constant(gif)).numpy()) == (30, 60)
    assert tuple(tf.io.decode_image(gif, expand_animations=False).shape[:2]) == (30, 60)


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring width x height (8-bit gray), no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


BAD = [
    (b"", "not a PNG, JPEG, GIF or BMP file"),
    (b"RIFF\0\0\0\0WEBPVP8 ", "not a PNG, JPEG, GIF or BMP file"),
    (_png_header(10, 10)[:20], "truncated PNG header: 20 bytes, the header needs 24"),
    (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 4) + b"tEXt" + bytes(12), "the first chunk is not IHDR"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\0", "truncated JPEG: no frame header \\(SOF\\) before the end of the file"),
    (b"\xff\xd8" + _segment(0xDA, bytes(10)) + b"\xff\xd9", "JPEG without a frame header \\(SOF\\) before its image"),
    (b"\xff\xd8" + _segment(0xE0, bytes(4)) + b"\xff\xc0\x00\x11\x08\x00", "the file ends inside its frame header"),
    (b"\xff\xd8\xff\xe0\x00\x01" + bytes(20), "a segment length below 2"),
    (b"\xff\xd8" + b"\xff" * 5000, "without a frame header \\(SOF\\) in its first 1024 segments"),
    (b"GIF89a\x10\x00", "truncated GIF header: 8 bytes, the header needs 10"),
    (b"BM" + bytes(18), "truncated BMP header: 20 bytes, the header needs 26"),
]


@pytest.mark.parametrize("encoded,message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_unreadable_headers_are_refused_with_the_reason(encoded, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        image_size(tf.constant(encoded))


def test_the_limit_is_inclusive_and_named_in_the_error():
    png = _png_header(20000, 20000)
    assert len(png) < 100  # the header alone declares the size: nothing needs decoding
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="the image is 20000 x 20000 = 400000000 pixels \\(width x height\\), over the limit "
                             "of 16000000 pixels \\(max_image_pixels\\)"):
        check_pixel_limit(tf.constant(png), 16_000_000)
    jpeg = _pil("JPEG", 30, 20)
    assert check_pixel_limit(tf.constant(jpeg), 600).numpy() == jpeg
    with pytest.raises(tf.errors.InvalidArgumentError, match="30 x 20 = 600 pixels .* limit of 599 pixels"):
        check_pixel_limit(tf.constant(jpeg), 599)
    with pytest.raises(ValueError, match="max_pixels must be an integer >= 1"):
        check_pixel_limit(tf.constant(jpeg), 0)


def test_training_loaders_apply_the_module_limit(tmp_path, monkeypatch, caplog):
    """decode_image, the tf.data pipelines and folder validation follow image_header.MAX_IMAGE_PIXELS."""
    for cls, (width, height) in (("a", (20, 10)), ("b", (30, 20))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.png").write_bytes(_pil("PNG", width, height))
    (tmp_path / "a" / "big.jpg").write_bytes(_pil("JPEG", 40, 30))
    files = data.load_folder(str(tmp_path), test_fraction=0.0, validate=False).train
    assert len(files) == 5
    images = np.concatenate([x for x, _ in data.evaluation_dataset(files, 8, 3).as_numpy_iterator()])
    assert images.shape == (5, 8, 8, 3)  # under the default limit every image decodes

    monkeypatch.setattr(image_header, "MAX_IMAGE_PIXELS", 600)
    with pytest.raises(tf.errors.InvalidArgumentError, match="40 x 30 = 1200 pixels .* limit of 600 pixels"):
        list(data.evaluation_dataset(files, 8, 3).as_numpy_iterator())
    with pytest.raises(tf.errors.InvalidArgumentError, match="limit of 600 pixels"):
        data.read_image(tf.constant(str(tmp_path / "a" / "big.jpg")), 8, 3)
    # An explicit limit wins over the module's.
    assert data.read_image(tf.constant(str(tmp_path / "a" / "big.jpg")), 8, 3, max_pixels=1200).shape == (8, 8, 3)
    with caplog.at_level(logging.WARNING, logger="pddm_tf.data"):
        validated = data.load_folder(str(tmp_path), test_fraction=0.0).train
    assert sorted(validated.paths) == sorted(p for p in files.paths if not p.endswith("big.jpg"))
    assert "big.jpg" in caplog.text and "limit of 600 pixels" in caplog.text
