"""PDDMModel's fast paths: the mining scores (`models.pddm._mining_scores`, fewer passes over the
pairs) are the PDDM scores of a float64 numpy reference and mine the same quadruplets as the layer's
`all_pair_scores`; the loss's pair scores (`models.pddm._pair_scores`, from the batch's embeddings)
and their gradients are those of the layer's pair mode."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import PDDM, small_convnet
from pddm_tf.methods import build_model
from pddm_tf.miners import mine_quadruplets, quadruplet_tuples, score_gap
from pddm_tf.models import mine_with_pddm, pddm_quadruplet_terms
from pddm_tf.models import pddm as pddm_module
from pddm_tf.models.pddm import _mining_scores, _pair_scores


def _model(dim: int, **options):
    keras.utils.set_random_seed(0)
    model = build_model("pddm_quadruplet", small_convnet(16, 1, width=8), dim, **options)
    model.build((None, 16, 16, 1))
    rng = np.random.default_rng(1)
    for weight in model.pddm.weights:  # non-zero biases too, so that every term counts
        weight.assign(0.3 * rng.normal(size=weight.shape).astype(np.float32))
    return model


def _numpy_scores(pddm, f: np.ndarray) -> np.ndarray:
    """METHODS.md section 1 for every ordered pair, in float64 (normalize_inputs=False)."""
    w = {v.path.rsplit("/", 1)[-1]: v.numpy().astype(np.float64) for v in pddm.weights}
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    u = np.abs(f[:, None] - f[None, :])
    v = 0.5 * (f[:, None] + f[None, :])
    u_h = np.maximum(u @ w["u_kernel"] + w["u_bias"], 0)
    v_h = np.maximum(v @ w["v_kernel"] + w["v_bias"], 0)
    u_h /= np.maximum(np.linalg.norm(u_h, axis=-1, keepdims=True), 1e-6)
    v_h /= np.maximum(np.linalg.norm(v_h, axis=-1, keepdims=True), 1e-6)
    c = np.maximum(np.concatenate([u_h, v_h], -1) @ w["c_kernel"] + w["c_bias"], 0)
    # The library's Euclidean prior, -g ||f_i - f_j|| (METHODS.md section 1), when the unit has one.
    prior = w["distance_weight"] * np.linalg.norm(f[:, None] - f[None, :], axis=-1) if "distance_weight" in w else 0.0
    return (c @ w["s_kernel"])[..., 0] + w["s_bias"][0] - prior


@pytest.mark.parametrize("size", [1, 2, 5, 24])  # fewer pairs than the 8 slices, and more
def test_mining_scores_are_the_pddm_scores_of_every_pair(size):
    model = _model(8)
    f = np.random.default_rng(0).normal(size=(size, 8)).astype(np.float32)
    np.testing.assert_allclose(_mining_scores(model.pddm, tf.constant(f)), _numpy_scores(model.pddm, f), atol=1e-5)


@pytest.mark.parametrize("classes, dim", [(8, 8), (64, 128)])
def test_model_mines_the_quadruplets_of_the_layer_scores(classes, dim):
    """At 8 x 4 and at the benchmark's 64 x 4, d = 128: the model's mining (through `_mining_scores`)
    returns exactly the quadruplets that the layer's all-pairs scores give."""
    model = _model(dim)
    assert not model.pddm.normalize_inputs  # the methods' default, which takes the fused path
    labels = tf.constant(np.repeat(np.arange(classes), 4), tf.int32)
    for seed in range(3):
        embeddings = tf.constant(np.random.default_rng(seed).normal(size=(4 * classes, dim)).astype(np.float32))
        mined = tf.function(model.mine)(embeddings, labels)
        scores = model.pddm.all_pair_scores(embeddings)
        expected = mine_quadruplets(labels, scores, model.hinge_loss.mining)
        assert expected.indices.shape[0] > 0
        np.testing.assert_array_equal(mined["quadruplets"].indices, expected.indices)
        np.testing.assert_allclose(mined["score_gap"], score_gap(labels, scores), atol=1e-5)


def test_normalised_inputs_keep_the_layer_path():
    model = _model(8, pddm_normalize_inputs=True)
    labels = tf.constant(np.repeat(np.arange(8), 4), tf.int32)
    embeddings = tf.constant(np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32))
    np.testing.assert_array_equal(model.mine(embeddings, labels)["quadruplets"].indices,
                                  mine_quadruplets(labels, model.pddm(embeddings), model.hinge_loss.mining).indices)


@pytest.mark.parametrize("distance_weight", [1.0, 0.0])  # with the Euclidean prior and without
def test_pair_scores_are_the_pddm_scores_of_the_pairs(distance_weight):
    pddm = PDDM(units=16, combined_units=12, distance_weight=distance_weight)
    pddm.build((None, 8))
    rng = np.random.default_rng(2)
    for weight in pddm.weights:
        weight.assign(0.3 * rng.normal(size=weight.shape).astype(np.float32))
    f = rng.normal(size=(12, 8)).astype(np.float32)
    a, b = rng.integers(0, 12, size=30), rng.integers(0, 12, size=30)
    a[:3] = b[:3]  # identical embeddings (u = 0) too
    np.testing.assert_allclose(_pair_scores(pddm, tf.constant(f), tf.constant(a), tf.constant(b)),
                               _numpy_scores(pddm, f)[a, b], atol=1e-5)


def test_loss_and_gradients_equal_those_of_the_layer_pair_mode(monkeypatch):
    """The double-header loss of mined quadruplets at 16 x 4 and its gradients with respect to the
    embeddings and every weight of the unit: the model's (through `_pair_scores`) against all 3q
    pairs scored by the layer's call."""
    model = _model(16)
    labels = tf.constant(np.repeat(np.arange(16), 4), tf.int32)
    embeddings = tf.Variable(np.random.default_rng(3).normal(size=(64, 16)).astype(np.float32))
    mined = mine_with_pddm(model.pddm, model.hinge_loss, "pddm", tf.convert_to_tensor(embeddings), labels)
    quads = mined["quadruplets"]
    variables = [embeddings, *model.pddm.trainable_variables]
    calls = []
    monkeypatch.setattr(pddm_module, "_pair_scores", lambda *args: calls.append(1) or _pair_scores(*args))

    def layer_loss():
        i, j, k, l = tf.unstack(quads.indices, num=4, axis=1)
        first, second = tf.concat([i, i, j], 0), tf.concat([j, k, l], 0)
        scores = model.pddm((tf.gather(embeddings, first), tf.gather(embeddings, second)))
        s_ij, s_ik, s_jl = tf.split(scores, 3)
        return model.hinge_loss.quadruplet_terms(embeddings, quadruplet_tuples(quads), tf.concat([s_ij, s_ij], 0),
                                                 tf.concat([s_ik, s_jl], 0)).total

    results = []
    for loss_of in (lambda: pddm_quadruplet_terms(model.pddm, model.hinge_loss, embeddings, mined)["loss"], layer_loss):
        with tf.GradientTape() as tape:
            loss = loss_of()
        results.append((loss, tape.gradient(loss, variables)))
    (loss, gradients), (expected_loss, expected_gradients) = results
    assert calls == [1] and quads.indices.shape[0] > 0
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    for gradient, expected in zip(gradients, expected_gradients, strict=True):
        expected = tf.convert_to_tensor(expected)
        assert float(tf.reduce_max(tf.abs(expected))) > 0
        np.testing.assert_allclose(tf.convert_to_tensor(gradient), expected, atol=1e-5)
