"""`compile(jit_compile=...)`: every method trains whatever it says, and XLA is used where it can compile.

Keras' default, jit_compile="auto", picks XLA on a machine with a GPU (and no distribution strategy).
The steps that mine a data-dependent number of tuples, or draw with tf.random.categorical, cannot be
compiled by XLA; those models declare Keras' `supports_jit = False`, so Keras runs them as plain
tf.functions. On this CPU-only machine "auto" means no XLA, so the tests ask for it with True.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import PDDMModel, small_convnet
from pddm_tf.methods import build_model, method_options
from pddm_tf.miners import mine_quadruplets, score_gap
from pddm_tf.training import TrainConfig
from pddm_tf.training import build_model as build_training_model

SIZE = 16
# XLA fuses and reorders float32 arithmetic; one step's loss moves by ~1e-6 relative here. 1e-4 leaves
# room for other CPUs' kernels and still catches a different batch, loss or mining.
LOSS_RTOL = 1e-4

# method -> whether its whole step compiles with XLA.
METHODS = {"triplet_batchhard": True, "dc_margin": True, "pddm_quadruplet": False, "margin": False,
           "hdml_npair": False, "dc_pddm": False}


def _batch():
    rng = np.random.default_rng(0)
    return rng.random((16, SIZE, SIZE, 1)).astype(np.float32), np.repeat(np.arange(4), 4).astype(np.int32)


def _model(method: str, jit_compile):
    keras.utils.set_random_seed(0)
    model = build_model(method, small_convnet(SIZE, 1, width=8), 8,
                        **method_options(method, num_classes=4, num_learners=2))
    model.build((None, SIZE, SIZE, 1))
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit_compile)
    return model


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_when_xla_is_asked_for(method):
    images, labels = _batch()
    reference, compiled = _model(method, False), _model(method, True)
    compiled.set_weights(reference.get_weights())

    assert compiled.supports_jit is METHODS[method]
    assert compiled.jit_compile is METHODS[method]  # XLA for the whole step exactly where it compiles
    for _ in range(2):  # the second step checks the update of the first
        expected = reference.train_on_batch(images, labels, return_dict=True)
        got = compiled.train_on_batch(images, labels, return_dict=True)
        assert np.isfinite(got["loss"])
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=LOSS_RTOL)


def test_pddm_xla_scores_mine_the_same_quadruplets():
    """PDDMModel's jit_compile=True compiles the all-pairs scores of mining: same scores up to float
    rounding, hence the same quadruplets, as the uncompiled layer on fixed batches."""
    model = _model("pddm_quadruplet", True)
    assert model.xla_scores and not _model("pddm_quadruplet", "auto").xla_scores
    labels = tf.constant(np.repeat(np.arange(8), 4), tf.int32)
    for seed in range(3):
        embeddings = tf.constant(np.random.default_rng(seed).normal(size=(32, 8)).astype(np.float32))
        mined = model.mine(embeddings, labels)
        scores = model.pddm(embeddings)
        np.testing.assert_allclose(model._compiled_scores(embeddings), scores, atol=1e-5)
        expected = mine_quadruplets(labels, scores, model.hinge_loss.mining)
        np.testing.assert_array_equal(mined["quadruplets"].indices, expected.indices)
        np.testing.assert_allclose(mined["score_gap"], score_gap(labels, scores), atol=1e-5)


def test_pddm_jit_compile_survives_saving(tmp_path):
    model = _model("pddm_quadruplet", True)
    images, labels = _batch()
    model.train_on_batch(images, labels)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, PDDMModel)
    assert loaded.xla_scores and loaded.jit_compile is False
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


@pytest.mark.parametrize("flag", [False, True])
def test_the_jit_compile_setting_reaches_the_model(flag):
    """`pddm-tf train --jit_compile` (TrainConfig.jit_compile): True compiles PDDM's mining scores,
    False leaves Keras' "auto" (no XLA on this CPU-only machine)."""
    model = build_training_model(TrainConfig.from_flags(image_size=SIZE, backbone_width=8, jit_compile=flag,
                                                        method="pddm_quadruplet"), 1, 4, 10)
    assert model.xla_scores is flag and model.jit_compile is False
    triplet = build_training_model(TrainConfig.from_flags(image_size=SIZE, backbone_width=8, jit_compile=flag,
                                                          method="triplet_batchhard"), 1, 4, 10)
    assert triplet.jit_compile is flag
