"""The proxy and classification-margin losses against numpy references (value and gradient, the
gradient by central finite differences of the numpy forward), their argument checks and their
Keras serialisation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import pddm_tf
from pddm_tf import losses

M, D, C = 7, 5, 4
LABELS = np.array([0, 0, 1, 1, 1, 3, 0])  # class 2 has no embedding in the batch


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _log_softmax_target(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    return shifted[np.arange(len(labels)), labels] - log_z


# ---------------------------------------------------------------- numpy references (float64)

def ref_proxy_anchor(x, p, y, margin=0.1, alpha=32.0):
    s = _unit(x) @ _unit(p).T
    classes = p.shape[0]
    pos_terms, neg_total = [], 0.0
    for c in range(classes):
        pos, neg = s[y == c, c], s[y != c, c]
        if len(pos):
            pos_terms.append(np.log1p(np.exp(-alpha * (pos - margin)).sum()))
        neg_total += np.log1p(np.exp(alpha * (neg + margin)).sum())
    return sum(pos_terms) / max(len(pos_terms), 1) + neg_total / classes


def ref_proxy_nca(x, p, y, softmax_scale=1.0):
    xn, pn = _unit(x), _unit(p)
    d = ((xn[:, None, :] - pn[None, :, :]) ** 2).sum(-1)
    return -_log_softmax_target(-softmax_scale * d, y).mean()


def ref_normalized_softmax(x, p, y, temperature=0.05):
    return -_log_softmax_target(_unit(x) @ _unit(p).T / temperature, y).mean()


def ref_soft_triple(x, p, y, k, la=20.0, gamma=0.1, margin=0.01, tau=0.0):
    s = (_unit(x) @ _unit(p).T).reshape(len(x), -1, k)
    w = np.exp(s / gamma)
    w /= w.sum(-1, keepdims=True)
    soft = (w * s).sum(-1)
    soft[np.arange(len(y)), y] -= margin
    return -_log_softmax_target(la * soft, y).mean() + tau * ref_center_distances(p, k) / (len(p) * (k - 1))


def ref_center_distances(p, k):
    """The SoftTriple regulariser R: sum over classes and centre pairs t < s of sqrt(2 + 1e-5 - 2 cos),
    by explicit loops over the pairs."""
    centers = _unit(p).reshape(-1, k, p.shape[1])
    return sum(math.sqrt(2 + 1e-5 - 2 * centers[c, t] @ centers[c, s])
               for c in range(len(centers)) for t in range(k) for s in range(t + 1, k))


def _margin_softmax(cos, y, target, scale):
    logits = cos.copy()
    logits[np.arange(len(y)), y] = target(cos[np.arange(len(y)), y])
    return -_log_softmax_target(scale * logits, y).mean()


def ref_arcface(x, p, y, margin=28.6, scale=64.0, k=1):
    cos = (_unit(x) @ _unit(p).T).reshape(len(x), -1, k).max(-1)
    return _margin_softmax(cos, y, lambda c: np.cos(np.arccos(c) + np.radians(margin)), scale)


def ref_cosface(x, p, y, margin=0.35, scale=64.0):
    return _margin_softmax(_unit(x) @ _unit(p).T, y, lambda c: c - margin, scale)


# (loss class, constructor kwargs, proxies per class, numpy reference of (x, p, y))
CASES = {
    "proxy_anchor": (losses.ProxyAnchorLoss, {}, 1, ref_proxy_anchor),
    "proxy_anchor_settings": (losses.ProxyAnchorLoss, {"margin": 0.2, "alpha": 8.0}, 1,
                              lambda x, p, y: ref_proxy_anchor(x, p, y, 0.2, 8.0)),
    "proxy_nca": (losses.ProxyNCALoss, {}, 1, ref_proxy_nca),
    "proxy_nca_plusplus": (losses.ProxyNCALoss, {"softmax_scale": 9.0}, 1,
                           lambda x, p, y: ref_proxy_nca(x, p, y, 9.0)),
    "normalized_softmax": (losses.NormalizedSoftmaxLoss, {}, 1, ref_normalized_softmax),
    "soft_triple": (losses.SoftTripleLoss, {"centers_per_class": 3}, 3,
                    lambda x, p, y: ref_soft_triple(x, p, y, 3)),
    # tau = 0.2, the paper's; len(p) = C K, so the reference divides R by C K (K - 1).
    "soft_triple_center_regularizer": (losses.SoftTripleLoss, {"centers_per_class": 3, "center_regularizer": 0.2}, 3,
                                       lambda x, p, y: ref_soft_triple(x, p, y, 3, tau=0.2)),
    "arcface": (losses.ArcFaceLoss, {}, 1, ref_arcface),
    "cosface": (losses.CosFaceLoss, {}, 1, ref_cosface),
    "subcenter_arcface": (losses.SubCenterArcFaceLoss, {"sub_centers": 2}, 2,
                          lambda x, p, y: ref_arcface(x, p, y, k=2)),
    # Small scales keep every logit's gradient well above finite-difference noise.
    "arcface_small_scale": (losses.ArcFaceLoss, {"scale": 4.0, "margin": 10.0}, 1,
                            lambda x, p, y: ref_arcface(x, p, y, 10.0, 4.0)),
}


def _inputs(k, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((M, D)), rng.standard_normal((C * k, D))


def _numeric_gradient(f, a, h=1e-6):
    grad = np.zeros_like(a)
    for index in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


@pytest.mark.parametrize("case", sorted(CASES))
def test_value_and_gradient_match_numpy(case):
    cls, kwargs, k, reference = CASES[case]
    x, p = _inputs(k)
    loss = cls(num_classes=C, embedding_size=D, dtype="float64", **kwargs)
    loss.proxies.assign(p)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = loss(tf.constant(LABELS), xt)
    grad_x, grad_p = tape.gradient(value, [xt, loss.proxies.value])
    expected = reference(x, p, LABELS)
    assert abs(expected) > 1e-3  # a loss that is not trivially zero on these inputs
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(grad_x.numpy(), _numeric_gradient(lambda a: reference(a, p, LABELS), x),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_p.numpy(), _numeric_gradient(lambda a: reference(x, a, LABELS), p),
                               rtol=1e-4, atol=1e-6)


def test_float32_matches_the_reference():
    x, p = _inputs(1)
    loss = losses.ProxyAnchorLoss(C, D)
    loss.proxies.assign(p.astype(np.float32))
    value = loss(LABELS, x.astype(np.float32))
    np.testing.assert_allclose(value.numpy(), ref_proxy_anchor(x, p, LABELS), rtol=1e-4)


def test_proxy_anchor_other_distances_match_numpy():
    """With a distance d (smaller is closer) s - delta and s + delta read delta - d and -delta - d."""
    x, p = _inputs(1, seed=3)
    xn, pn = _unit(x), _unit(p)
    squared = ((xn[:, None] - pn[None]) ** 2).sum(-1)
    for name, d in (("squared_euclidean", squared), ("euclidean", np.sqrt(squared)), ("cosine", 1 - xn @ pn.T)):
        loss = losses.ProxyAnchorLoss(C, D, distance=name, dtype="float64")
        loss.proxies.assign(p)
        s = -d
        pos = [np.log1p(np.exp(-32 * (s[LABELS == c, c] - 0.1)).sum()) for c in range(C) if (LABELS == c).any()]
        neg = [np.log1p(np.exp(32 * (s[LABELS != c, c] + 0.1)).sum()) for c in range(C)]
        np.testing.assert_allclose(loss(LABELS, x).numpy(), np.mean(pos) + np.sum(neg) / C, rtol=1e-6, err_msg=name)


def test_cosine_distance_gives_the_cosine_losses_unchanged():
    """The cosine-only losses read the cosine back from the cosine distance 1 - cos."""
    x, p = _inputs(1, seed=4)
    for cls in (losses.NormalizedSoftmaxLoss, losses.ArcFaceLoss, losses.CosFaceLoss):
        values = []
        for name in ("cosine_similarity", "cosine"):
            loss = cls(C, D, distance=name, dtype="float64")
            loss.proxies.assign(p)
            values.append(float(loss(LABELS, x)))
        assert values[0] == pytest.approx(values[1], rel=1e-9)


def test_reducers_follow_the_contract():
    """"sum" adds the per-embedding cross-entropies; Proxy-Anchor's "sum" adds both terms over proxies."""
    x, p = _inputs(1, seed=5)
    nca = losses.ProxyNCALoss(C, D, reducer="sum", dtype="float64")
    nca.proxies.assign(p)
    np.testing.assert_allclose(float(nca(LABELS, x)), M * ref_proxy_nca(x, p, LABELS), rtol=1e-6)
    anchor = losses.ProxyAnchorLoss(C, D, reducer="sum", dtype="float64")
    anchor.proxies.assign(p)
    s = _unit(x) @ _unit(p).T
    pos = sum(np.log1p(np.exp(-32 * (s[LABELS == c, c] - 0.1)).sum()) for c in range(C))
    neg = sum(np.log1p(np.exp(32 * (s[LABELS != c, c] + 0.1)).sum()) for c in range(C))
    np.testing.assert_allclose(float(anchor(LABELS, x)), pos + neg, rtol=1e-6)


def test_no_reference_set_and_no_tuples():
    loss = losses.ProxyNCALoss(C, D)
    x = np.ones((2, D), np.float32)
    with pytest.raises(ValueError, match="does not take ref_embeddings"):
        loss.compute(np.array([0, 1]), x, ref_embeddings=x, ref_labels=np.array([0, 1]))


def test_arcface_at_the_target_proxy_is_finite():
    """An embedding on its own proxy (cos = 1): the sine's floor keeps the gradient finite."""
    loss = losses.ArcFaceLoss(2, 3)
    loss.proxies.assign([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    x = tf.constant([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(tf.constant([0, 1]), x)
    assert np.isfinite(tape.gradient(value, x).numpy()).all()
    # cos(0 + m) against cos(90 degrees) = 0 for the other class.
    expected = -np.log(np.exp(64 * np.cos(np.radians(28.6))) / (np.exp(64 * np.cos(np.radians(28.6))) + 1))
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- SoftTriple's centre regulariser

def _soft_triple(tau, p, k=3, dtype="float64"):
    loss = losses.SoftTripleLoss(C, D, centers_per_class=k, center_regularizer=tau, dtype=dtype)
    loss.proxies.assign(p.astype(dtype))
    return loss


def _value_and_gradients(loss, x, labels=LABELS):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = loss(tf.constant(labels), xt)
    grad_x, grad_p = tape.gradient(value, [xt, loss.proxies.value])
    return value.numpy(), grad_x.numpy(), grad_p.numpy()


def _ref_center_gradient(p, k):
    """dR/dp by hand: with u = p / |p| and r_ts = sqrt(2 + 1e-5 - 2 u_t . u_s), dR/du_t = -sum_s u_s / r_ts
    over t's class, then through the normalisation, dR/dp_t = (I - u_t u_t^T) dR/du_t / |p_t|."""
    norms = np.linalg.norm(p, axis=1, keepdims=True)
    u = p / norms
    grad_u = np.zeros_like(p)
    for t in range(len(p)):
        for s in range(len(p)):
            if s != t and s // k == t // k:
                grad_u[t] -= u[s] / math.sqrt(2 + 1e-5 - 2 * u[t] @ u[s])
    return (grad_u - (grad_u * u).sum(1, keepdims=True) * u) / norms


def test_soft_triple_without_regulariser_is_the_loss_before_it():
    """center_regularizer=0 (explicit or the default) is the numpy reference of the loss without R."""
    x, p = _inputs(3, seed=6)
    expected = ref_soft_triple(x, p, LABELS, 3)
    for loss in (_soft_triple(0.0, p), losses.SoftTripleLoss(C, D, centers_per_class=3, dtype="float64")):
        loss.proxies.assign(p)
        np.testing.assert_allclose(float(loss(LABELS, x)), expected, rtol=1e-9)
    assert losses.SoftTripleLoss(C, D).get_config()["center_regularizer"] == 0.0


def test_soft_triple_regulariser_value_and_gradient_by_hand():
    """With tau > 0 the loss grows by tau R / (C K (K - 1)) whatever the batch, and the centres' gradient by
    tau dR/dp / (C K (K - 1)) (analytic); the embeddings' gradient is unchanged. One pair of centres nearly
    coincides (r ~ 1e-3): d r / d cos = -1/r is large there and the normalisation's projection cancels
    most of it, the regime where a wrong floor or projection shows."""
    k, tau = 3, 0.7
    x, p = _inputs(k, seed=7)
    p[4] = p[3] + 1e-3 * np.linalg.norm(p[3]) * np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    scale = tau / (C * k * (k - 1))
    for labels in (LABELS, np.array([3, 2, 2, 1, 0, 0, 1])):
        value_0, grad_x0, grad_p0 = _value_and_gradients(_soft_triple(0.0, p), x, labels)
        value, grad_x, grad_p = _value_and_gradients(_soft_triple(tau, p), x, labels)
        np.testing.assert_allclose(value - value_0, scale * ref_center_distances(p, k), rtol=1e-9)
        np.testing.assert_allclose(grad_x, grad_x0, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grad_p - grad_p0, scale * _ref_center_gradient(p, k), rtol=1e-6, atol=1e-9)
    u = _unit(p)
    assert 2e-4 < math.sqrt(2 - 2 * u[3] @ u[4]) < 2e-3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_soft_triple_regulariser_at_coinciding_centres_is_finite(dtype):
    """Two equal centres (and one opposite): the 1e-5 under the root keeps value and gradient finite, in
    float32 too, where the computed cosine of a vector with itself can exceed 1."""
    k = 3
    x, p = _inputs(k, seed=8)
    p[1] = p[0]
    p[2] = -p[0]
    loss = _soft_triple(1.0, p, dtype=dtype)
    zero = _soft_triple(0.0, p, dtype=dtype)
    value, grad_x, grad_p = _value_and_gradients(loss, x.astype(dtype))
    assert np.isfinite(grad_x).all() and np.isfinite(grad_p).all()
    expected = ref_center_distances(p, k) / (C * k * (k - 1))
    np.testing.assert_allclose(value - float(zero(LABELS, x.astype(dtype))), expected, rtol=1e-5)
    # Class 0's pairs: sqrt(1e-5) for the equal two, sqrt(4 + 1e-5) twice for the opposite one.
    np.testing.assert_allclose(ref_center_distances(p[:k], k), math.sqrt(1e-5) + 2 * math.sqrt(4 + 1e-5),
                               rtol=1e-9)


def test_soft_triple_regulariser_alone_on_an_empty_batch():
    """No embedding: the cross-entropy's mean is 0 and the loss is the regulariser alone."""
    _, p = _inputs(2, seed=9)
    loss = _soft_triple(0.2, p, k=2)
    np.testing.assert_allclose(float(loss(np.zeros([0], np.int32), np.zeros([0, D]))),
                               0.2 * ref_center_distances(p, 2) / (C * 2 * 1), rtol=1e-9)


def test_soft_triple_regulariser_merges_the_centres_of_a_class():
    """What the regulariser is for: gradient descent on it alone (an empty batch) pulls the K centres of
    each class together, so a class ends using one centre's direction."""
    k = 3
    _, p = _inputs(k, seed=10)
    loss = _soft_triple(1.0, p)
    optimizer = keras.optimizers.SGD(2.0)
    labels, embeddings = tf.zeros([0], tf.int32), tf.zeros([0, D], tf.float64)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = loss(labels, embeddings)
        optimizer.apply_gradients([(tape.gradient(value, loss.proxies.value), loss.proxies)])

    def spread(centres):  # the largest distance between two unit centres of a class, per class
        unit = _unit(centres).reshape(C, k, D)
        return np.linalg.norm(unit[:, :, None] - unit[:, None], axis=-1).max(axis=(1, 2))

    assert spread(p).min() > 1.0  # 1.5-1.9 at the start
    for _ in range(300):
        step()
    assert spread(loss.proxies.numpy()).max() < 0.1, spread(loss.proxies.numpy())  # 0.03-0.04 measured


def test_empty_batch_is_zero_not_nan():
    """No embedding: every mean is over nothing and every log(1 + empty sum) is 0."""
    for cls in (losses.ProxyAnchorLoss, losses.ProxyNCALoss, losses.SoftTripleLoss, losses.ArcFaceLoss):
        assert float(cls(C, D)(np.zeros([0], np.int32), np.zeros([0, D], np.float32))) == 0.0


# ---------------------------------------------------------------- argument checks

@pytest.mark.parametrize("cls, bad, message", [
    (losses.ProxyAnchorLoss, {"margin": math.nan}, "margin must be a finite number"),
    (losses.ProxyAnchorLoss, {"alpha": math.inf}, "alpha must be a finite number"),
    (losses.ProxyAnchorLoss, {"alpha": 0.0}, "alpha must be > 0"),
    (losses.ProxyAnchorLoss, {"lr_multiplier": -1.0}, "lr_multiplier must be > 0"),
    (losses.ProxyNCALoss, {"softmax_scale": math.nan}, "softmax_scale must be a finite number"),
    (losses.NormalizedSoftmaxLoss, {"temperature": 0}, "temperature must be > 0"),
    (losses.SoftTripleLoss, {"gamma": -0.1}, "gamma must be > 0"),
    (losses.SoftTripleLoss, {"centers_per_class": 0}, "centers_per_class must be a positive integer"),
    (losses.SoftTripleLoss, {"center_regularizer": -0.1}, "center_regularizer must be >= 0"),
    (losses.SoftTripleLoss, {"center_regularizer": math.nan}, "center_regularizer must be a finite number"),
    (losses.SoftTripleLoss, {"center_regularizer": 0.2, "centers_per_class": 1},
     "center_regularizer=0.2 needs centers_per_class >= 2"),
    (losses.ArcFaceLoss, {"margin": 200.0}, "margin is in degrees"),
    (losses.ArcFaceLoss, {"scale": math.inf}, "scale must be a finite number"),
    (losses.CosFaceLoss, {"margin": -0.1}, "margin must be >= 0"),
    (losses.SubCenterArcFaceLoss, {"sub_centers": 1.5}, "sub_centers must be a positive integer"),
    (losses.NormalizedSoftmaxLoss, {"distance": "euclidean"}, "defined on cosine logits"),
    (losses.ArcFaceLoss, {"distance": "squared_euclidean"}, "defined on cosine logits"),
    (losses.SoftTripleLoss, {"distance": "dot_product"}, "defined on cosine logits"),
    (losses.ProxyAnchorLoss, {"miner": "batch_hard"}, "takes no miner"),
])
def test_bad_arguments_are_refused_with_one_line(cls, bad, message):
    with pytest.raises(ValueError, match=message) as error:
        cls(num_classes=C, embedding_size=D, **bad)
    assert "\n" not in str(error.value)


def test_bad_sizes_and_labels_are_refused():
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        losses.ProxyNCALoss(0, D)
    loss = losses.ProxyNCALoss(C, D)
    with pytest.raises(ValueError, match="embedding_size=5"):
        loss(LABELS, np.zeros((M, D + 1), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="a label is >= num_classes=4"):
        loss(np.array([0, 4]), np.ones((2, D), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf"):
        loss(np.array([0, 1]), np.array([[np.nan] * D, [1.0] * D], np.float32))


# ---------------------------------------------------------------- serialisation

@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trip(case):
    cls, kwargs, _, _ = CASES[case]
    loss = cls(num_classes=C, embedding_size=D, **kwargs)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(again) is cls and again.get_config() == loss.get_config()
    assert again.proxies.shape == loss.proxies.shape


def test_exported_from_the_package():
    for name in ("ProxyAnchorLoss", "ProxyNCALoss", "NormalizedSoftmaxLoss", "SoftTripleLoss", "ArcFaceLoss",
                 "CosFaceLoss", "SubCenterArcFaceLoss", "ProxyLossModel"):
        assert name in pddm_tf.__all__ and getattr(pddm_tf, name).__name__ == name
