"""The bounds of README's "Limits" section: what decoding an animated GIF costs, and the one-line
refusals of out-of-range arguments in the Python API."""

import io
import os
import struct
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pddm_tf import ContrastiveLoss, MetricLossModel, data, small_convnet
from pddm_tf.data import image_header
from pddm_tf.evaluation import _index_file, nearest_neighbors
from pddm_tf.layers import EmbeddingHead, SlicedEmbeddingHead
from pddm_tf.training.config import FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- GIF, read in Python


def _skip_sub_blocks(gif: bytes, pos: int) -> int:
    """The position after the chain of data sub-blocks starting at `pos` (its 0 terminator included)."""
    while gif[pos]:
        pos += gif[pos] + 1
    return pos + 1


def _table(packed: int) -> int:
    return 3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0


def _blocks(gif: bytes) -> tuple[bytes, list[bytes]]:
    """(header with its global colour table, [every block up to the trailer]), by the GIF89a layout."""
    pos = 13 + _table(gif[10])
    head, blocks = gif[:pos], []
    while gif[pos] != 0x3B:
        start = pos
        if gif[pos] == 0x21:
            pos = _skip_sub_blocks(gif, pos + 2)
        else:
            assert gif[pos] == 0x2C
            pos = _skip_sub_blocks(gif, pos + 11 + _table(gif[pos + 9]))
        blocks.append(gif[start:pos])
    return head, blocks


def _rechunked(block: bytes, rng: np.random.Generator) -> bytes:
    """An image block whose LZW data is cut into sub-blocks of random lengths 1..255 (as valid as 255s)."""
    data_start = 11 + _table(block[9])
    payload, pos = b"", data_start
    while block[pos]:
        payload += block[pos + 1:pos + 1 + block[pos]]
        pos += block[pos] + 1
    chunks, i = [], 0
    while i < len(payload):
        n = int(rng.integers(1, 256))
        chunks.append(bytes([len(payload[i:i + n])]) + payload[i:i + n])
        i += n
    return block[:data_start] + b"".join(chunks) + b"\0"


def _animation(frames: list[np.ndarray], comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], comment=comment, loop=0, duration=50,
                   optimize=False, disposal=1)
    return buffer.getvalue()


def _first_frame_pixels(gif: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(gif)) as image:
        return np.asarray(image.convert("RGB"))


def test_an_animated_gif_is_cut_after_its_first_image():
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(5)]
    gif = _animation(frames, comment=b"a comment extension before the first image " * 20)
    head, blocks = _blocks(gif)
    images = [i for i, block in enumerate(blocks) if block[0] == 0x2C]
    assert len(images) == 5  # the file is a true animation
    expected = head + b"".join(blocks[:images[0] + 1]) + b";"
    assert image_header.first_frame(tf.constant(gif), 10**6).numpy() == expected
    # Traced (the SavedModel's way) as eagerly.
    traced = tf.function(lambda b: image_header.first_frame(b, 10**6))
    assert traced(tf.constant(gif)).numpy() == expected


def test_first_frame_walks_sub_blocks_of_any_length_and_decodes_as_pil():
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    head, blocks = _blocks(_animation(frames))
    blocks = [_rechunked(b, rng) if b[0] == 0x2C else b for b in blocks]
    gif = head + b"".join(blocks) + b";"
    cut = image_header.first_frame(tf.constant(gif), 10**6).numpy()
    first = next(i for i, b in enumerate(blocks) if b[0] == 0x2C)
    assert cut == head + b"".join(blocks[:first + 1]) + b";"
    decoded = data.decode_image(tf.constant(gif), 40, 3).numpy()
    np.testing.assert_allclose(decoded, _first_frame_pixels(gif) / 255.0, atol=1e-6)


@pytest.mark.parametrize("encoded", [b"\x89PNG\r\n\x1a\n" + bytes(40), b"\xff\xd8\xff" + bytes(40), b"BM" + bytes(40)],
                         ids=["png", "jpeg", "bmp"])
def test_first_frame_leaves_other_formats_alone(encoded):
    assert image_header.first_frame(tf.constant(encoded), 10).numpy() == encoded


def test_a_truncated_first_image_is_left_whole_to_its_decoder():
    gif = _animation([np.zeros((8, 8, 3), np.uint8)])
    truncated = gif[:-6]
    assert image_header.first_frame(tf.constant(truncated), 10**6).numpy() == truncated


def test_the_first_image_may_not_declare_more_than_the_limit():
    """A 16 x 16 screen whose first image declares 6,000 x 5,000: giflib would allocate that image."""
    gif = _animation([np.zeros((16, 16, 3), np.uint8)])
    head, blocks = _blocks(gif)
    i = next(i for i, b in enumerate(blocks) if b[0] == 0x2C)
    blocks[i] = blocks[i][:5] + struct.pack("<HH", 6000, 5000) + blocks[i][9:]
    big = head + b"".join(blocks) + b";"
    with pytest.raises(tf.errors.InvalidArgumentError, match="first image of the GIF is 6000 x 5000 = 30000000 pixels"):
        data.decode_image(tf.constant(big), 8, 3)


def test_a_walk_of_changing_sub_block_lengths_is_bounded():
    gif = _animation([np.zeros((8, 8, 3), np.uint8)])
    head, blocks = _blocks(gif)
    # Comment extensions of alternating sub-block lengths 1, 2, 1, 2, ...: one walk step each.
    comment = b"\x21\xfe" + b"".join(bytes([1 + i % 2]) + b"x" * (1 + i % 2) for i in range(5000)) + b"\0"
    crafted = head + comment + b"".join(blocks) + b";"
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 4096 blocks or runs"):
        data.decode_image(tf.constant(crafted), 8, 3)


_GIF_COST = textwrap.dedent("""
    import resource, sys
    import tensorflow as tf
    from pddm_tf import data
    gif = open(sys.argv[1], "rb").read()
    decode = tf.function(lambda b: data.decode_images(b, 8, 3))
    decode(tf.constant([open(sys.argv[2], "rb").read()]))  # traced on the one-frame file
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    decode(tf.constant([gif])).numpy()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
""")


@pytest.mark.slow
def test_an_animation_costs_one_frame(tmp_path):
    """60 frames of a 2,000 x 2,000 screen: giflib held them all (4 MB each, 240 MB); one is decoded now."""
    buffer = io.BytesIO()
    Image.new("P", (2000, 2000), 1).save(buffer, "GIF")
    head, blocks = _blocks(buffer.getvalue())
    (tmp_path / "one.gif").write_bytes(head + b"".join(blocks) + b";")
    (tmp_path / "many.gif").write_bytes(head + b"".join(blocks) * 60 + b";")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", _GIF_COST, str(tmp_path / "many.gif"), str(tmp_path / "one.gif")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    grown_mb = int(result.stdout.split()[-1])
    assert grown_mb < 60, f"decoding the 60-frame GIF grew the peak RSS by {grown_mb} MB"


# --------------------------------------------------------------------------- arguments of the Python API


def test_the_arrays_sampler_refuses_batches_without_a_positive_pair():
    x, y = np.zeros((8, 2), np.float32), np.repeat(np.arange(4), 2)
    with pytest.raises(ValueError, match="batch_per_class must be >= 2.*got 1"):
        data.class_balanced_dataset_from_arrays(x, y, 2, 1)
    images, labels = next(iter(data.class_balanced_dataset_from_arrays(x, y, 2, 2)))  # K = 2: pairs
    assert sorted(np.bincount(labels.numpy())[labels.numpy()]) == [2, 2, 2, 2]


@pytest.mark.parametrize("layer", [EmbeddingHead(4), SlicedEmbeddingHead(4, num_slices=2)], ids=["head", "sliced"])
def test_embedding_heads_refuse_feature_maps(layer):
    with pytest.raises(ValueError, match=r"takes features \[n, k\], got shape \(2, 3, 3, 8\).*GlobalAveragePooling2D"):
        layer(np.zeros((2, 3, 3, 8), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(None, 3, 8\)"):
        layer(keras.Input((3, 8)))
    features = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(layer(features).numpy(), axis=1), 1.0, atol=1e-5)  # [n, k] still


@pytest.fixture(scope="module")
def indexed_model():
    keras.utils.set_random_seed(0)
    model = MetricLossModel(small_convnet(8, 1, width=4, depth=2), ContrastiveLoss(), embedding_dim=4)
    x = np.random.default_rng(2).random((20, 8, 8, 1), dtype=np.float32)
    model.index(x, np.repeat(np.arange(4), 5))
    return model, x


@pytest.mark.parametrize("k", [2.7, 2.0, True, "2"])
def test_lookup_and_search_refuse_a_non_integer_k(indexed_model, k):
    model, x = indexed_model
    with pytest.raises(ValueError, match="k .*must be an integer"):
        model.lookup(x[:2], k=k)
    with pytest.raises(ValueError, match="k .*must be an integer"):
        nearest_neighbors(x[:2, :, 0, 0], x[:, :, 0, 0], k=k)
    assert [len(row) for row in model.lookup(x[:2], k=np.int64(2))] == [2, 2]


def test_lookup_refuses_non_finite_images_naming_the_first(indexed_model):
    model, x = indexed_model
    for bad in (np.nan, np.inf):
        queries = x[:5].copy()
        queries[3, 4, 4, 0] = bad
        with pytest.raises(ValueError, match="image 3 of the request .* NaN or inf"):
            model.lookup(queries)
        # In a dataset, counted across its batches.
        with pytest.raises(ValueError, match="image 3 of the request"):
            model.lookup(tf.data.Dataset.from_tensor_slices(queries).batch(2))


def test_lookup_of_no_image_is_an_empty_answer(indexed_model):
    model, x = indexed_model
    assert model.lookup(x[:0]) == []
    assert model.lookup(tf.data.Dataset.from_tensor_slices((x[:0], np.zeros(0, np.int32))).batch(4)) == []
    # A dataset's batches give what the array gives (labels ignored).
    batched = model.lookup(tf.data.Dataset.from_tensor_slices((x[:5], np.zeros(5, np.int32))).batch(2), k=3)
    assert batched == model.lookup(x[:5], k=3)


# --------------------------------------------------------------------------- the test run itself


@pytest.mark.slow
def test_a_parallel_test_run_ends_with_its_summary():
    """CI's test command (pytest-xdist) on one quick file ends with its summary line: TensorFlow's start-up
    lines and "E0000 ... failed call to cuInit" (on a machine without a GPU; CUDA_VISIBLE_DEVICES="" and
    TF_CPP_MIN_LOG_LEVEL=2 do not silence it) came after it, from the xdist controller's conftest."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_atomic.py", "-q", "-n", "1", "--dist",
                             "loadfile", "-p", "no:cacheprovider"], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert " passed in " in result.stdout.strip().splitlines()[-1], result.stdout[-2000:]
    lines = (result.stdout + "\n" + result.stderr).splitlines()
    assert not [line for line in lines if "cuInit" in line or line.startswith(("I0000", "E0000", "W0000"))], lines


def test_readme_limits_state_the_bounds_of_the_code():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    limits = readme[readme.index("## Limits"):readme.index("## Licence")]
    assert f"| {image_header.MAX_IMAGE_PIXELS:,} (`--max_image_pixels`" in limits
    assert f"{image_header._GIF_MAX_STEPS:,} blocks or runs" in limits
    assert f"up to {image_header._GIF_RUN:,} sub-blocks" in limits
    assert f"| Segments walked to find a JPEG's frame header | {image_header._JPEG_MAX_STEPS:,} |" in limits
    bound = {flag: FLAGS[flag][2].bound for flag in FLAGS}
    assert f"`--batch_per_class` >= {bound['batch_per_class'].low:g}" in limits
    assert "pddm_tf.cli.validation.BOUNDS" not in readme
    for flag in ("image_size", "embedding_dim", "backbone_width", "batch_classes", "batch_per_class", "eval_batch_size",
                 "xbm"):
        assert f"`--{flag}`" in limits and f"<= {int(bound[flag].high):,}" in limits, flag
    assert bound["max_image_pixels"].high == 2**28 and f"<= 2^28 ({2**28:,})" in limits
    assert f"`--image_size` <= {int(bound['image_size'].high):,}" in limits
    assert f"`--embedding_dim` <= {int(bound['embedding_dim'].high):,}" in limits
    assert f"`--xbm` <= {int(bound['xbm'].high):,}" in limits
    assert _index_file.MAX_INDEX_BYTES == 8 << 30 and "at most 8 GiB in all" in limits
    assert f"at most {_index_file.MAX_INFLATION} times the file's size" in limits
    assert "<!--" not in limits
    assert "| PNG, JPEG, GIF, BMP" in limits and set(image_header.FORMAT_SIGNATURES) == {"PNG", "JPEG", "GIF", "BMP"}
