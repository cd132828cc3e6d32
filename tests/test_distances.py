"""pddm_tf.distances: the distance objects against float64 brute force, their registry, and the
losses that take a distance by name."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import distances
from pddm_tf.distances import DISTANCES, Distance, get_distance
from pddm_tf.losses import ContrastiveLoss, TripletLoss


def _points(seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(7, 5)).astype(np.float32)
    x[3] = x[2]  # a coincident pair: the square root's gradient is infinite there
    return x


def _brute_force(name: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    out = np.zeros((len(x), len(x)))
    for i in range(len(x)):
        for j in range(len(x)):
            diff = x[i] - x[j]
            if name == "euclidean":
                out[i, j] = np.sqrt(diff @ diff)
            elif name == "squared_euclidean":
                out[i, j] = diff @ diff
            else:
                out[i, j] = 1.0 - x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
    return out


def test_the_registry_holds_the_named_distances():
    assert {"euclidean", "squared_euclidean", "cosine"} <= set(DISTANCES)


@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean", "cosine"])
def test_pairwise_matches_brute_force_and_has_finite_gradients(name):
    x = tf.constant(_points())
    with tf.GradientTape() as tape:
        tape.watch(x)
        d = get_distance(name).pairwise(x)
        total = tf.reduce_sum(d * np.linspace(0.5, 1.5, 49, dtype=np.float32).reshape(7, 7))
    np.testing.assert_allclose(d.numpy(), _brute_force(name, _points()), atol=2e-5)
    np.testing.assert_array_equal(np.diag(d.numpy()), 0.0)
    np.testing.assert_array_equal(d.numpy(), d.numpy().T)
    assert np.isfinite(tape.gradient(total, x).numpy()).all()


def test_unknown_and_unnamed_distances_are_refused():
    known = r"\['cosine', 'cosine_similarity', 'dot_product', 'euclidean'"
    with pytest.raises(ValueError, match=r"unknown distance 'manhattan'; expected one of " + known):
        get_distance("manhattan")
    with pytest.raises(ValueError, match="unknown distance 'manhattan'"):
        TripletLoss(distance="manhattan")

    class Unnamed(Distance):
        def pairwise(self, x):
            return distances.pairwise_distances(x)

    with pytest.raises(ValueError, match="has no registered name"):
        TripletLoss(distance=Unnamed())

    class Inherited(distances.EuclideanDistance):  # inherits the name "euclidean" without taking it over
        pass

    assert DISTANCES["euclidean"] is distances.EuclideanDistance
    with pytest.raises(ValueError, match="has no registered name"):
        TripletLoss(distance=Inherited())


def test_a_user_distance_registers_itself_and_survives_a_loss_round_trip():
    class Chebyshev(Distance):
        name = "test_chebyshev"

        def pairwise(self, x):
            return tf.reduce_max(tf.abs(x[:, None] - x[None, :]), axis=-1)

    loss = TripletLoss(margin=0.1, miner="batch_hard", distance=Chebyshev())
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.get_config()["distance"] == "test_chebyshev" and restored.distance == Chebyshev()
    x = _points(1)
    labels = np.array([0, 0, 1, 1, 2, 2, 2], np.int32)
    np.testing.assert_allclose(restored(labels, x).numpy(), loss(labels, x).numpy())


def _np_batch_hard(labels, d, margin):
    """Mean over anchors with a positive and a negative of max(0, margin + max D_ap - min D_an)."""
    hinges = []
    for a in range(len(labels)):
        pos = [d[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            hinges.append(max(0.0, margin + max(pos) - min(neg)))
    return np.mean(hinges)


@pytest.mark.parametrize("name", ["squared_euclidean", "cosine"])
def test_triplet_loss_on_another_distance_matches_numpy(name):
    x = _points(2)
    labels = np.array([0, 0, 1, 1, 2, 2, 0], np.int32)
    got = TripletLoss(margin=0.3, miner="batch_hard", distance=name)(labels, x).numpy()
    assert got == pytest.approx(_np_batch_hard(labels, _brute_force(name, x), 0.3), rel=1e-5)


def test_contrastive_loss_on_cosine_distance_matches_numpy():
    x = _points(3)
    labels = np.array([0, 0, 1, 1, 2, 2, 0], np.int32)
    d = _brute_force("cosine", x)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(x), dtype=bool)
    pull = np.maximum(d - 0.1, 0.0) ** 2
    push = np.maximum(0.9 - d, 0.0) ** 2
    pulls, pushes = pull[same & off & (pull > 0)], push[~same & (push > 0)]
    expected = (pulls.mean() if pulls.size else 0.0) + (pushes.mean() if pushes.size else 0.0)
    got = ContrastiveLoss(pos_margin=0.1, neg_margin=0.9, distance="cosine")(labels, x).numpy()
    assert got == pytest.approx(expected, rel=1e-5)
