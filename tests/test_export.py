"""SavedModel export: loads without pddm_tf, reproduces the Keras embeddings, versions atomically."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from pddm_tf import PDDM, PDDMModel, data, small_convnet
from pddm_tf.export import export_saved_model, next_version

SIZE = 32
# float32 through the same graph ops; only op fusion / threading order can differ.
ATOL = 1e-5

_LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    model_dir, paths_file, pixels_file, out_file = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir)
    paths = json.load(open(paths_file))
    encoded = tf.constant([open(p, "rb").read() for p in paths])
    from_bytes = loaded.signatures["serving_default"](images=encoded)["embeddings"].numpy()
    pixels = tf.constant(np.load(pixels_file))
    from_pixels = loaded.signatures["embed_pixels"](pixels=pixels)["embeddings"].numpy()
    a = tf.constant(from_pixels[:3]); b = tf.constant(from_pixels[3:6])
    scores = loaded.signatures["pddm_similarity"](embeddings_a=a, embeddings_b=b)["scores"].numpy()
    assert "pddm_tf" not in sys.modules
    np.savez(out_file, from_bytes=from_bytes, from_pixels=from_pixels, scores=scores,
             imported=np.array(sorted(m for m in sys.modules if m.startswith("pddm_tf"))))
""")


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    model = PDDMModel(small_convnet(SIZE, 1, width=16, depth=3), embedding_dim=16,
                      pddm=PDDM(units=16, combined_units=16))
    model.build((None, SIZE, SIZE, 1))
    return model


def test_saved_model_matches_keras_in_fresh_process(model, tmp_path):
    split = data.load_omniglot(test_fraction=0.5, seed=0)
    files = split.test
    picks = np.random.default_rng(0).choice(len(files), size=12, replace=False)
    paths = [str(files.paths[i]) for i in picks]
    # Reference: the Keras model on the training pipeline's own decoding of the same files.
    subset = data.ImageFiles(files.paths[picks], files.labels[picks], files.class_names, files.rotations[picks])
    pixels = np.concatenate([x.numpy() for x, _ in data.evaluation_dataset(subset, SIZE, 1, batch_size=5)])
    expected = model.predict(pixels, verbose=0)
    expected_scores = model.pddm((expected[:3], expected[3:6])).numpy()

    version_dir = export_saved_model(model, tmp_path / "export", SIZE, 1)
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    np.save(tmp_path / "pixels.npy", pixels)
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-c", _LOADER, version_dir, str(tmp_path / "paths.json"),
                    str(tmp_path / "pixels.npy"), str(tmp_path / "out.npz")],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    out = np.load(tmp_path / "out.npz")
    assert out["imported"].size == 0
    np.testing.assert_allclose(out["from_bytes"], expected, atol=ATOL)
    np.testing.assert_allclose(out["from_pixels"], expected, atol=ATOL)
    np.testing.assert_allclose(out["scores"], expected_scores, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(out["from_bytes"], axis=1), 1.0, atol=1e-5)


def test_versions_increase_and_are_never_overwritten(model, tmp_path):
    root = tmp_path / "serving"
    assert next_version(root) == 1
    first = export_saved_model(model, root, SIZE, 1)
    (root / "notes").mkdir()  # non-numeric folders are ignored, as TF Serving does
    second = export_saved_model(model, root, SIZE, 1)
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
    assert sorted(os.listdir(root)) == ["1", "2", "notes"]  # no staging folder left behind
    with pytest.raises(FileExistsError):
        export_saved_model(model, root, SIZE, 1, version=2)


def test_an_export_removes_the_staging_folders_of_killed_exports(model, tmp_path):
    root = tmp_path / "serving"
    stale = root / ".1.0123456789ab.tmp" / "1"  # what a kill -9 during the export of version 1 leaves
    stale.mkdir(parents=True)
    (stale / "saved_model.pb").write_bytes(b"half")
    (root / ".1.notours.tmp").mkdir()
    assert os.path.basename(export_saved_model(model, root, SIZE, 1)) == "1"
    assert sorted(os.listdir(root)) == [".1.notours.tmp", "1"]


def test_failed_write_leaves_no_version(model, tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        os.makedirs(args[0])
        open(os.path.join(args[0], "saved_model.pb"), "w").close()
        raise OSError("disk full")

    # ExportArchive() returns a backend-specific subclass: patch the class actually used.
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", broken)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, tmp_path / "serving", SIZE, 1)
    assert os.listdir(tmp_path / "serving") == []


def test_serving_default_applies_the_evaluation_transform(model, tmp_path):
    """After --augment training, serving must crop like evaluation: a non-square photo shows the difference."""
    import tensorflow as tf

    from pddm_tf.data import transforms

    rng = np.random.default_rng(1)
    photo = (rng.random((48, 80, 1)) * 255).astype(np.uint8)
    photo[:, :20] = 255  # a bright band that the centre crop removes and the plain resize keeps
    path = tmp_path / "photo.png"
    path.write_bytes(tf.io.encode_png(photo).numpy())
    files = data.ImageFiles([str(path)], [0], ("c",), [0])
    transform = transforms.eval_transform(SIZE)
    cropped = next(iter(data.evaluation_dataset(files, SIZE, 1, transform=transform)))[0].numpy()
    resized = next(iter(data.evaluation_dataset(files, SIZE, 1)))[0].numpy()
    assert np.abs(cropped - resized).max() > 0.1  # the two decodings differ, so the check below can fail

    loaded = tf.saved_model.load(export_saved_model(model, tmp_path / "export", SIZE, 1, transform=transform))
    served = loaded.signatures["serving_default"](images=tf.constant([path.read_bytes()]))["embeddings"].numpy()
    np.testing.assert_allclose(served, model.predict(cropped, verbose=0), atol=ATOL)
    assert not np.allclose(served, model.predict(resized, verbose=0), atol=1e-3)


def test_the_pixel_limit_is_fixed_at_export(model, tmp_path):
    """export_saved_model(max_image_pixels=...) is what serving_default enforces, inclusive, for JPEG as for PNG."""
    import io

    import tensorflow as tf
    from PIL import Image

    def encoded(fmt: str, width: int, height: int) -> bytes:
        pixels = np.random.default_rng(width).integers(0, 256, (height, width), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt)
        return buffer.getvalue()

    with pytest.raises(ValueError, match="max_image_pixels must be an integer >= 1"):
        export_saved_model(model, tmp_path / "export", SIZE, 1, max_image_pixels=0)
    loaded = tf.saved_model.load(export_saved_model(model, tmp_path / "export", SIZE, 1, max_image_pixels=1200))
    assert int(loaded.max_image_pixels[0].numpy()) == 1200
    serve = loaded.signatures["serving_default"]
    at_limit = [encoded("PNG", 40, 30), encoded("JPEG", 30, 40)]
    expected = model.predict(np.stack([data.decode_image(x, SIZE, 1).numpy() for x in at_limit]), verbose=0)
    np.testing.assert_allclose(serve(images=tf.constant(at_limit))["embeddings"].numpy(), expected, atol=ATOL)
    for fmt in ("PNG", "JPEG"):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match="image 1 of the batch \\(counting from 0\\) is 41 x 30 = 1230 pixels .* over the "
                                 "limit of 1200 pixels"):
            serve(images=tf.constant([at_limit[0], encoded(fmt, 41, 30)]))
