"""PDDM layer against a float64 numpy implementation of METHODS.md section 1."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import PDDM, EmbeddingHead

# float32 layer vs float64 reference: scores are O(1) sums over ~100 terms.
ATOL = 2e-5


def _unit(x, eps=1e-12):
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), eps))


def numpy_pddm(layer, fa, fb, normalize_inputs=False, normalize_hidden=True):
    """Direct float64 transcription of the unit, one pair per row (with the Euclidean prior
    -g ||f_a - f_b|| when the layer has it)."""
    w = {v.path.split("/")[-1]: np.asarray(v.numpy(), np.float64) for v in layer.weights}
    fa, fb = _unit(fa.astype(np.float64)), _unit(fb.astype(np.float64))
    u, v = np.abs(fa - fb), (fa + fb) / 2
    if normalize_inputs:
        u, v = _unit(u), _unit(v)
    u1 = np.maximum(u @ w["u_kernel"] + w["u_bias"], 0)
    v1 = np.maximum(v @ w["v_kernel"] + w["v_bias"], 0)
    if normalize_hidden:
        u1, v1 = _unit(u1), _unit(v1)
    c = np.maximum(np.concatenate([u1, v1], axis=1) @ w["c_kernel"] + w["c_bias"], 0)
    prior = w["distance_weight"] * np.linalg.norm(fa - fb, axis=1) if "distance_weight" in w else 0.0
    return (c @ w["s_kernel"])[:, 0] + w["s_bias"][0] - prior


def _layer(dim, **kwargs):
    keras.utils.set_random_seed(1)
    layer = PDDM(units=16, combined_units=12, **kwargs)
    layer.build((None, dim))
    # Non-zero biases so the test exercises them.
    for v in layer.weights:
        if "bias" in v.path:
            v.assign(np.random.default_rng(2).normal(0, 0.3, v.shape).astype("float32"))
    return layer


@pytest.mark.parametrize("normalize_inputs,normalize_hidden,distance_weight",
                         list(itertools.product([True, False], [True, False], [0.0, 0.7])))
def test_pair_and_all_pairs_match_numpy(normalize_inputs, normalize_hidden, distance_weight):
    rng = np.random.default_rng(0)
    layer = _layer(8, normalize_inputs=normalize_inputs, normalize_hidden=normalize_hidden,
                   distance_weight=distance_weight)
    assert ("distance_weight" in {v.path.split("/")[-1] for v in layer.weights}) is (distance_weight > 0)
    fa, fb = rng.normal(size=(20, 8)).astype("float32"), rng.normal(size=(20, 8)).astype("float32")
    expected = numpy_pddm(layer, fa, fb, normalize_inputs, normalize_hidden)
    np.testing.assert_allclose(layer((fa, fb)).numpy(), expected, atol=ATOL)

    f = rng.normal(size=(11, 8)).astype("float32")
    ii, jj = np.meshgrid(np.arange(11), np.arange(11), indexing="ij")
    expected_all = numpy_pddm(layer, f[ii.ravel()], f[jj.ravel()], normalize_inputs, normalize_hidden).reshape(11, 11)
    all_pairs = layer(f).numpy()
    np.testing.assert_allclose(all_pairs, expected_all, atol=ATOL)
    np.testing.assert_array_equal(all_pairs, all_pairs.T)
    pair_mode = layer((f[ii.ravel()], f[jj.ravel()])).numpy().reshape(11, 11)
    np.testing.assert_allclose(all_pairs, pair_mode, atol=ATOL)


def test_identical_features_give_finite_scores_and_gradients():
    layer = _layer(6)
    f = tf.constant(np.random.default_rng(3).normal(size=(5, 6)), tf.float32)
    f = tf.concat([f, f[:2]], axis=0)  # exact duplicates as well as the diagonal
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(f)
        all_scores = tf.reduce_sum(layer(f))
        pair_scores = tf.reduce_sum(layer((f, f)))
    for target in (all_scores, pair_scores):
        grads = tape.gradient(target, [f] + layer.trainable_variables)
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)
        # u = 0 pairs still contribute a gradient to the v branch: the check is not vacuous.
        assert np.abs(tape.gradient(target, layer.v_kernel).numpy()).sum() > 0
    # With u = 0 the u branch reduces to ReLU(b_u): compare with the reference at u = 0.
    np.testing.assert_allclose(layer((f, f)).numpy(), numpy_pddm(layer, f.numpy(), f.numpy()), atol=ATOL)


def test_all_pairs_is_traceable_with_unknown_batch():
    layer = _layer(4)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    f = np.random.default_rng(4).normal(size=(7, 4)).astype("float32")
    np.testing.assert_allclose(fn(f).numpy(), layer(f).numpy(), atol=1e-6)


def test_serialization_round_trip():
    layer = _layer(8, normalize_inputs=False)
    clone = PDDM.from_config(layer.get_config())
    clone.build((None, 8))
    clone.set_weights(layer.get_weights())
    f = np.random.default_rng(5).normal(size=(6, 8)).astype("float32")
    assert clone.normalize_inputs is False and clone.units == 16
    np.testing.assert_allclose(clone(f).numpy(), layer(f).numpy(), atol=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, PDDM) and restored.get_config() == layer.get_config()


def test_embedding_head_is_unit_norm_and_matches_dense():
    head = EmbeddingHead(5)
    x = np.random.default_rng(6).normal(size=(4, 3)).astype("float32")
    y = head(x).numpy()
    kernel, bias = (w.numpy() for w in head.weights)
    ref = x @ kernel + bias
    np.testing.assert_allclose(y, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-6)
    assert EmbeddingHead.from_config(head.get_config()).embedding_dim == 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="units"):
        PDDM(units=0)
    with pytest.raises(ValueError, match="embedding_dim"):
        EmbeddingHead(0)


def test_normalised_inputs_make_the_score_blind_to_the_distance_of_symmetric_pairs():
    """Documented property: with normalize_inputs, (cos t e1 +- sin t e2) scores alike for every t;
    without it the score depends on t."""
    import numpy as np
    import tensorflow as tf

    from pddm_tf.layers import PDDM

    t = np.array([0.1, 0.4, 0.9, 1.3])
    a = np.zeros((4, 8), np.float32)
    b = np.zeros((4, 8), np.float32)
    a[:, 0], a[:, 1] = np.cos(t), np.sin(t)
    b[:, 0], b[:, 1] = np.cos(t), -np.sin(t)
    for normalize, varies in ((True, False), (False, True)):
        tf.keras.utils.set_random_seed(0)
        layer = PDDM(units=16, combined_units=16, normalize_inputs=normalize, distance_weight=0.0)
        layer((tf.constant(a), tf.constant(b)))
        rng = np.random.default_rng(1)
        for weight in layer.weights:  # non-zero biases, as after training (zero ones hide the scale too)
            weight.assign(rng.normal(size=weight.shape).astype(np.float32))
        scores = layer((tf.constant(a), tf.constant(b))).numpy()
        assert (np.ptp(scores) > 1e-3) == varies, (normalize, scores)


@pytest.mark.parametrize("normalize", [True, False])
def test_pddm_normalize_inputs_reaches_the_model_from_the_method_options(normalize):
    """`build_model(..., pddm_normalize_inputs=...)` (the CLI's --pddm_normalize_inputs) builds the
    model's PDDM with that setting, and its pair scores are then numpy_pddm's with that setting."""
    import numpy as np

    from pddm_tf.backbones import small_convnet
    from pddm_tf.methods import build_model

    model = build_model("pddm_quadruplet", small_convnet(16, 1, width=4, depth=2), 8,
                        pddm_normalize_inputs=normalize)
    model.build((None, 16, 16, 1))
    assert model.pddm.normalize_inputs is normalize
    rng = np.random.default_rng(3)
    for weight in model.pddm.weights:
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    fa, fb = rng.normal(size=(2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(model.pddm((fa, fb)).numpy(), numpy_pddm(model.pddm, fa, fb, normalize),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["per_pair", "hardest"])
def test_all_pairs_mine_the_quadruplets_of_the_float64_scores(mode):
    """The all-pairs mode scores only i <= j and mirrors them; mining on it must pick the same
    quadruplets as mining on the float64 reference of every ordered pair, on fixed 16 x 4 batches."""
    from pddm_tf.miners.mining import mine_quadruplets

    layer = _layer(16)
    labels = np.repeat(np.arange(16), 4).astype("int32")
    for seed in range(3):
        f = np.random.default_rng(seed).normal(size=(64, 16)).astype("float32")
        ii, jj = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
        reference = numpy_pddm(layer, f[ii.ravel()], f[jj.ravel()]).reshape(64, 64)
        got = mine_quadruplets(labels, layer(f), mode).indices.numpy()
        want = mine_quadruplets(labels, reference.astype("float32"), mode).indices.numpy()
        np.testing.assert_array_equal(got, want)
