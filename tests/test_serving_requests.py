"""Malformed requests to every exported signature: each is answered with an InvalidArgumentError naming
its input, none ends the process (TensorFlow aborted on a rank-3 `pixels` batch before), and an empty
batch is a valid request. The requests run in a fresh process where pddm_tf cannot be imported, as
under TF Serving; one process for all of them, so an abort fails the test instead of the suite."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import PDDM, PDDMModel, small_convnet
from pddm_tf.export import Gallery, export_saved_model

SIZE, DIM, K = 16, 8, 3

_CLIENT = textwrap.dedent("""
    import json, sys

    class _NoPddmTf:  # as under TF Serving: the graph alone, no library
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "pddm_tf":
                raise ImportError("pddm_tf is not importable here")

    sys.meta_path.insert(0, _NoPddmTf())
    import numpy as np
    import tensorflow as tf

    path, cases = sys.argv[1], json.loads(sys.argv[2])
    signatures = tf.saved_model.load(path).signatures
    results = {}
    for case, (signature, inputs) in cases.items():
        feed = {name: tf.reshape(tf.constant(flat, dtype=dtype), shape)
                for name, (flat, dtype, shape) in inputs.items()}
        try:
            out = signatures[signature](**feed)
            results[case] = {"shapes": {k: list(v.shape) for k, v in out.items()}}
        except tf.errors.InvalidArgumentError as error:
            results[case] = {"error": str(error)}
    print(json.dumps(results))
""")


def _tensor(values, dtype="float32"):
    """A request input as JSON: (flat values, dtype, shape), so empty batches keep their shape."""
    values = np.asarray(values)
    return (values.ravel().tolist(), dtype, list(values.shape))


def _pixels(shape, value=0.5):
    return _tensor(np.full(shape, value, np.float32))


# case -> (signature, {input: _tensor(...)}, the text its error must hold, or None for a valid request).
_CASES = {
    "pixels rank 3": ("embed_pixels", {"pixels": _pixels([4, SIZE, SIZE])},
                      f"pixels must have shape [n, {SIZE}, {SIZE}, 1]"),
    "pixels rank 5": ("embed_pixels", {"pixels": _pixels([2, SIZE, SIZE, 1, 1])}, "got [2 16 16 1 1]"),
    "pixels 20x20": ("embed_pixels", {"pixels": _pixels([2, 20, 20, 1])}, "got [2 20 20 1]"),
    "pixels 3 channels": ("embed_pixels", {"pixels": _pixels([2, SIZE, SIZE, 3])}, "got [2 16 16 3]"),
    "pixels scalar": ("embed_pixels", {"pixels": _tensor(0.5)}, "pixels must have shape"),
    "pixels NaN": ("embed_pixels", {"pixels": _pixels([3, SIZE, SIZE, 1], float("nan"))}, "pixels holds NaN"),
    "pixels inf in row 2": ("embed_pixels", {"pixels": _tensor(np.concatenate(
        [np.full([2, SIZE, SIZE, 1], 0.5), np.full([1, SIZE, SIZE, 1], np.inf)]))},
        "in row 2 of the batch"),
    "pixels 0-255": ("embed_pixels", {"pixels": _pixels([1, SIZE, SIZE, 1], 255.0)}, "outside [-0.1, 1.1]"),
    "pixels 1e30": ("embed_pixels", {"pixels": _pixels([1, SIZE, SIZE, 1], 1e30)}, "outside [-0.1, 1.1]"),
    "pixels empty": ("embed_pixels", {"pixels": _pixels([0, SIZE, SIZE, 1])}, None),
    "pixels overshoot": ("embed_pixels", {"pixels": _pixels([1, SIZE, SIZE, 1], 1.05)}, None),
    "images rank 2": ("serving_default", {"images": _tensor([["x"]], "string")}, "images must have shape [n]"),
    "images scalar": ("serving_default", {"images": _tensor("x", "string")}, "images must have shape [n]"),
    "images empty": ("serving_default", {"images": _tensor(np.zeros([0], str), "string")}, None),
    "search rank 2": ("search", {"images": _tensor([["x"]], "string")}, "images must have shape [n]"),
    "search empty": ("search", {"images": _tensor(np.zeros([0], str), "string")}, None),
    "pddm NaN": ("pddm_similarity", {"embeddings_a": _tensor(np.full([2, DIM], np.nan)),
                                     "embeddings_b": _tensor(np.ones([2, DIM]))},
                 "embeddings_a holds NaN or inf"),
    "pddm wrong d": ("pddm_similarity", {"embeddings_a": _tensor(np.ones([2, DIM])),
                                         "embeddings_b": _tensor(np.ones([2, DIM + 1]))},
                     f"embeddings_b must have shape [n, {DIM}]"),
    "pddm unequal n": ("pddm_similarity", {"embeddings_a": _tensor(np.ones([2, DIM])),
                                           "embeddings_b": _tensor(np.ones([3, DIM]))},
                       "must hold as many rows, got 2 and 3"),
    "pddm empty": ("pddm_similarity", {"embeddings_a": _tensor(np.ones([0, DIM])),
                                       "embeddings_b": _tensor(np.ones([0, DIM]))}, None),
}

# What each valid request returns: output name -> shape.
_VALID_SHAPES = {
    "pixels empty": {"embeddings": [0, DIM]},
    "pixels overshoot": {"embeddings": [1, DIM]},
    "images empty": {"embeddings": [0, DIM]},
    "search empty": {"ids": [0, K], "indices": [0, K], "distances": [0, K], "scores": [0, K]},
    "pddm empty": {"scores": [0]},
}


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = PDDMModel(small_convnet(SIZE, 1, width=8), embedding_dim=DIM, pddm=PDDM(units=8, combined_units=8))
    model.build((None, SIZE, SIZE, 1))
    rng = np.random.default_rng(0)
    gallery = Gallery(rng.normal(size=(10, DIM)).astype(np.float32), [f"item{i}" for i in range(10)])
    path = export_saved_model(model, tmp_path_factory.mktemp("requests"), SIZE, 1, gallery=gallery, search_k=K)
    cases = {case: (signature, inputs) for case, (signature, inputs, _) in _CASES.items()}
    run = subprocess.run([sys.executable, "-c", _CLIENT, path, json.dumps(cases)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"the serving process died (rc {run.returncode}):\n{run.stderr[-3000:]}"
    return model, path, json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", [case for case, (_, _, text) in _CASES.items() if text is not None])
def test_a_malformed_request_is_refused_naming_its_input(answers, case):
    _, _, results = answers
    assert "error" in results[case], f"{case} was answered: {results[case]}"
    assert _CASES[case][2] in results[case]["error"]


@pytest.mark.parametrize("case", sorted(_VALID_SHAPES))
def test_an_empty_batch_is_a_valid_request(answers, case):
    _, _, results = answers
    assert results[case] == {"shapes": _VALID_SHAPES[case]}


def test_checked_pixels_embed_as_the_keras_model_does(answers):
    # The checks reshape the request to its static shape: the embeddings must not change.
    model, path, _ = answers
    pixels = np.random.default_rng(1).uniform(size=(5, SIZE, SIZE, 1)).astype(np.float32)
    served = tf.saved_model.load(path).signatures["embed_pixels"](pixels=tf.constant(pixels))["embeddings"]
    np.testing.assert_allclose(served.numpy(), model(pixels, training=False).numpy(), atol=1e-5)
