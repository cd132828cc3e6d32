"""pddm_tf.reducers against numpy, and the distances' kinds (larger_is_closer) against brute force."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf.distances import DISTANCES, get_distance, serialize_distance
from pddm_tf.losses import TripletLoss
from pddm_tf.reducers import (
    REDUCERS,
    AvgNonZeroReducer,
    MeanReducer,
    Reducer,
    SumReducer,
    ThresholdReducer,
    get_reducer,
    serialize_reducer,
)

_RNG = np.random.default_rng(7)
_LOSSES = np.maximum(_RNG.normal(size=(5, 6)), 0.0).astype(np.float32)  # about half exact zeros
_MASK = _RNG.random((5, 6)) < 0.7


def _numpy(name, losses, mask, extra=0.0, low=None, high=None):
    selected = mask.copy()
    if name == "threshold":
        selected &= (losses > (-np.inf if low is None else low)) & (losses < (np.inf if high is None else high))
    total = losses[selected].astype(np.float64).sum() + extra
    divisor = {"mean": selected.sum(), "threshold": selected.sum(), "sum": 1,
               "avg_non_zero": (selected & (losses > 0)).sum()}[name]
    return total / max(divisor, 1)


@pytest.mark.parametrize("reducer, name, bounds", [
    (MeanReducer(), "mean", {}), (AvgNonZeroReducer(), "avg_non_zero", {}), (SumReducer(), "sum", {}),
    (ThresholdReducer(low=0.3), "threshold", {"low": 0.3}),
    (ThresholdReducer(low=0.1, high=1.0), "threshold", {"low": 0.1, "high": 1.0}),
])
def test_reducers_equal_numpy_with_mask_and_extra(reducer, name, bounds):
    for mask in (_MASK, np.ones_like(_MASK)):
        expected = _numpy(name, _LOSSES, mask, 0.25, **bounds)
        np.testing.assert_allclose(float(reducer(_LOSSES, mask, extra=0.25)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(reducer(_LOSSES)), _numpy(name, _LOSSES, np.ones_like(_MASK), **bounds),
                               rtol=1e-5)


@pytest.mark.parametrize("name", ["mean", "avg_non_zero", "sum", "threshold"])
def test_no_element_gives_zero_with_a_zero_gradient_and_traces(name):
    reducer = get_reducer(name)
    losses = tf.Variable(tf.zeros([0]))
    with tf.GradientTape() as tape:
        value = reducer(losses * 2.0)
    assert float(value) == 0.0
    gradient = tape.gradient(value, losses)
    assert gradient is None or gradient.shape == (0,)
    traced = tf.function(reducer, input_signature=[tf.TensorSpec([None]), tf.TensorSpec([None], tf.bool)])
    values = np.array([0.0, 2.0, 4.0], np.float32)
    np.testing.assert_allclose(float(traced(values, [True, True, False])),
                               _numpy(name, values, np.array([True, True, False])), rtol=1e-6)
    all_masked = traced(values, [False, False, False])
    assert float(all_masked) == 0.0


def test_avg_non_zero_keeps_the_scale_of_hard_elements_where_mean_dilutes_it():
    # The reason the contrastive and margin losses default to it: 99 easy elements, one hard.
    losses = np.zeros(100, np.float32)
    losses[0] = 2.0
    assert float(AvgNonZeroReducer()(losses)) == pytest.approx(2.0)
    assert float(MeanReducer()(losses)) == pytest.approx(0.02)


def test_registry_serialization_and_refusals():
    assert {"mean", "avg_non_zero", "sum", "threshold"} <= set(REDUCERS)
    reducer = ThresholdReducer(low=0.2, high=3.0)
    copy = get_reducer(serialize_reducer(reducer))
    assert copy == reducer and copy is not reducer and copy.get_config() == {"low": 0.2, "high": 3.0}
    assert get_reducer("mean") == MeanReducer()
    with pytest.raises(ValueError, match=r"unknown reducer 'median'; expected one of \['avg_non_zero'"):
        get_reducer("median")
    with pytest.raises(ValueError, match="unknown reducer 3"):
        get_reducer(3)
    for bad in (float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="ThresholdReducer: low must be a finite number"):
            ThresholdReducer(low=bad)
    with pytest.raises(ValueError, match="need low < high"):
        ThresholdReducer(low=1.0, high=0.5)

    class Unnamed(Reducer):
        def divisor(self, losses, selected):
            return tf.constant(1.0)

    with pytest.raises(ValueError, match="has no registered name"):
        get_reducer(Unnamed())


# -- distances: the kind, similarities, the reference set -------------------------------------------

def _x(seed=0, m=6):
    return np.random.default_rng(seed).normal(size=(m, 5)).astype(np.float32)


def _brute(name, x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    out = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            cos = x[i] @ y[j] / (np.linalg.norm(x[i]) * np.linalg.norm(y[j]))
            out[i, j] = {"euclidean": np.linalg.norm(x[i] - y[j]), "squared_euclidean": np.sum((x[i] - y[j]) ** 2),
                         "cosine": 1 - cos, "cosine_similarity": cos, "dot_product": x[i] @ y[j]}[name]
    return out


@pytest.mark.parametrize("name, larger_is_closer", [("euclidean", False), ("squared_euclidean", False),
                                                    ("cosine", False), ("cosine_similarity", True),
                                                    ("dot_product", True)])
def test_every_distance_knows_its_kind_and_matches_brute_force_against_a_reference_set(name, larger_is_closer):
    distance = get_distance(name)
    assert distance.larger_is_closer is larger_is_closer and distance.is_inverted is larger_is_closer
    assert distance.kind == ("similarity" if larger_is_closer else "distance")
    x, y = _x(0), _x(1, m=4)
    np.testing.assert_allclose(distance.pairwise(x, y).numpy(), _brute(name, x, y), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(distance.pairwise(x).numpy(), _brute(name, x, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(distance.paired(x[:4], y).numpy(), np.diag(_brute(name, x[:4], y)),
                               rtol=1e-4, atol=1e-4)
    # farther(x, y): how much farther apart the pair valued x is than the pair valued y.
    near, far = (0.9, 0.1) if larger_is_closer else (0.1, 0.9)
    assert float(distance.farther(tf.constant(far), tf.constant(near))) == pytest.approx(0.8)
    # Miners rank by a dissimilarity: the order of the brute-force distances is kept or reversed.
    ranked = distance.to_dissimilarity(distance.pairwise(x, y)).numpy()
    order = np.argsort(_brute(name, x, y), axis=1)
    np.testing.assert_array_equal(np.argsort(ranked, axis=1), order[:, ::-1] if larger_is_closer else order)
    assert serialize_distance(distance) == name and name in DISTANCES


def test_a_loss_round_trips_a_non_default_distance_and_reducer():
    loss = TripletLoss(miner="batch_hard", distance="cosine_similarity", reducer=ThresholdReducer(low=0.01))
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert copy.distance == loss.distance and copy.reducer == loss.reducer
    labels, x = np.array([0, 0, 1, 1, 2, 2]), _x(3)
    assert float(copy(labels, x)) == pytest.approx(float(loss(labels, x)), rel=1e-6)
