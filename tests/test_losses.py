"""Double-header hinge loss against numpy on the mined quadruplets (METHODS.md section 2)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import PDDM, DoubleHeaderHingeLoss, QuadrupletMiner, mine_quadruplets


def numpy_loss(quads, scores, f, alpha, beta, lam, heads):
    """Mean over quadruplets of E_m + lambda E_e, written out term by term."""
    if len(quads) == 0:
        return 0.0, 0.0, 0.0
    e_m, e_e = [], []
    for i, j, k, l in quads:
        d = lambda a, b: float(np.sum((f[a] - f[b]) ** 2))  # noqa: E731
        m = max(0.0, alpha + scores[i, k] - scores[i, j])
        e = max(0.0, beta + d(i, j) - d(i, k))
        if heads == 2:
            m += max(0.0, alpha + scores[j, l] - scores[i, j])
            e += max(0.0, beta + d(i, j) - d(j, l))
        e_m.append(m)
        e_e.append(e)
    return np.mean(e_m) + lam * np.mean(e_e), np.mean(e_m), np.mean(e_e)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("mode", ["hardest", "per_pair"])
def test_loss_equals_numpy_on_mined_quadruplets(heads, mode):
    rng = np.random.default_rng(heads * 10 + len(mode))
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4], np.int32)  # 3 and 4 are singletons
    f = _unit(rng.normal(size=(10, 6))).astype(np.float32)
    pddm = PDDM(units=8, combined_units=8)
    scores = pddm(f).numpy().astype(np.float64)
    loss = DoubleHeaderHingeLoss(alpha=0.3, beta=0.4, embedding_weight=0.7, heads=heads, miner=QuadrupletMiner(mode))
    quads = mine_quadruplets(labels, scores.astype(np.float32), mode).indices.numpy()
    assert len(quads) > 0
    expected = numpy_loss(quads, scores, f.astype(np.float64), 0.3, 0.4, 0.7, heads)
    terms = loss.terms(labels, f, pddm(f))
    np.testing.assert_allclose([t.numpy() for t in terms], expected, rtol=1e-5, atol=1e-6)
    # The Keras Loss entry point computes the same objective.
    np.testing.assert_allclose(loss(labels, {"embeddings": f, "scores": pddm(f)}).numpy(), expected[0], rtol=1e-5)


def test_without_scores_is_euclidean_quadruplet_loss():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 3).astype(np.int32)
    f = _unit(rng.normal(size=(12, 5))).astype(np.float32)
    scores = -((f[:, None, :].astype(np.float64) - f[None]) ** 2).sum(-1)
    loss = DoubleHeaderHingeLoss(alpha=0.2, beta=0.2, embedding_weight=1.0)
    quads = mine_quadruplets(labels, scores.astype(np.float32), "per_pair").indices.numpy()
    expected = numpy_loss(quads, scores, f.astype(np.float64), 0.2, 0.2, 1.0, 2)[0]
    np.testing.assert_allclose(loss(labels, f).numpy(), expected, rtol=1e-5)


def test_no_valid_quadruplet_gives_zero_not_nan():
    f = _unit(np.random.default_rng(0).normal(size=(4, 3))).astype(np.float32)
    for labels in (np.arange(4), np.zeros(4)):
        value = DoubleHeaderHingeLoss()(labels.astype(np.int32), f).numpy()
        assert value == 0.0


def test_gradients_reach_embeddings_and_pddm():
    labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
    f = tf.Variable(_unit(np.random.default_rng(1).normal(size=(6, 4))).astype(np.float32))
    pddm = PDDM(units=8, combined_units=8)
    loss = DoubleHeaderHingeLoss(alpha=5.0, beta=2.0)  # large margins: every hinge is active
    with tf.GradientTape() as tape:
        value = loss(labels, {"embeddings": f, "scores": pddm(f)})
    grads = tape.gradient(value, [f] + pddm.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert np.abs(grads[0].numpy()).sum() > 0 and np.abs(grads[-2].numpy()).sum() > 0


def test_nan_embeddings_raise():
    f = np.ones((4, 3), np.float32)
    f[1, 2] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        DoubleHeaderHingeLoss()(np.array([0, 0, 1, 1], np.int32), f)


def test_bad_inputs_and_arguments():
    f = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="batch sizes"):
        DoubleHeaderHingeLoss()(np.array([0, 0, 1], np.int32), f)
    with pytest.raises(ValueError, match="shape"):
        DoubleHeaderHingeLoss()(np.array([0, 0, 1, 1], np.int32), np.ones((4, 3, 1), np.float32))
    with pytest.raises(ValueError, match="heads"):
        DoubleHeaderHingeLoss(heads=3)
    with pytest.raises(ValueError, match="unknown mining mode 'semi'"):
        DoubleHeaderHingeLoss(miner={"name": "quadruplet", "config": {"mode": "semi"}})


def test_serialization():
    loss = DoubleHeaderHingeLoss(alpha=0.1, beta=0.2, embedding_weight=0.3, heads=1, miner=QuadrupletMiner("hardest"))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert (clone.alpha, clone.beta, clone.embedding_weight, clone.heads, clone.mining) == (0.1, 0.2, 0.3, 1, "hardest")
