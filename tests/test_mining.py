"""Quadruplet mining against a brute-force numpy search (METHODS.md section 2)."""

import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import euclidean_scores, mine_quadruplets
from pddm_tf.miners.mining import score_gap


def brute_force(labels, scores, mode):
    """Explicit loops over every pair and candidate negative."""
    m = len(labels)

    def hardest_negative(a):
        negs = [k for k in range(m) if labels[k] != labels[a]]
        return max(negs, key=lambda k: scores[a, k]) if negs else None

    pairs = [(i, j) for i in range(m) for j in range(i + 1, m) if labels[i] == labels[j]
             and hardest_negative(i) is not None and hardest_negative(j) is not None]
    if mode == "hardest":
        pairs = [min(pairs, key=lambda p: scores[p])] if pairs else []
    return sorted((i, j, hardest_negative(i), hardest_negative(j)) for i, j in pairs)


def _batch(rng, m, num_classes):
    labels = rng.integers(0, num_classes, size=m)
    scores = rng.normal(size=(m, m))
    return labels.astype(np.int32), ((scores + scores.T) / 2).astype(np.float32)


@pytest.mark.parametrize("mode", ["hardest", "per_pair"])
@pytest.mark.parametrize("seed", range(6))
def test_pddm_scores_mining_matches_brute_force(mode, seed):
    rng = np.random.default_rng(seed)
    # Few classes over many items: singletons, pairs and larger classes all occur.
    labels, scores = _batch(rng, 17, num_classes=9)
    quads = mine_quadruplets(labels, scores, mode)
    got = sorted(map(tuple, quads.indices.numpy().tolist()))
    assert got == brute_force(labels, scores, mode)
    pairs = sum(1 for i in range(17) for j in range(i + 1, 17) if labels[i] == labels[j])
    assert quads.num_candidates.numpy() == (1 if mode == "hardest" else pairs)


@pytest.mark.parametrize("mode", ["hardest", "per_pair"])
def test_euclidean_mining_matches_brute_force(mode):
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(5), 3).astype(np.int32)
    labels = np.append(labels, 9)  # a class with a single image
    f = rng.normal(size=(16, 4)).astype(np.float32)
    d = ((f[:, None, :].astype(np.float64) - f[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(euclidean_scores(f).numpy(), -d, atol=1e-5)
    got = sorted(map(tuple, mine_quadruplets(labels, euclidean_scores(f), mode).indices.numpy().tolist()))
    assert got == brute_force(labels, -d, mode)


@pytest.mark.parametrize("mode", ["hardest", "per_pair"])
def test_batches_without_valid_quadruplet(mode):
    no_positive = np.arange(6, dtype=np.int32)
    one_class = np.zeros(6, dtype=np.int32)
    scores = np.random.default_rng(0).normal(size=(6, 6)).astype(np.float32)
    for labels in (no_positive, one_class):
        quads = mine_quadruplets(labels, scores, mode)
        assert quads.indices.shape == (0, 4)
        assert quads.valid_fraction().numpy() == 0.0


def test_mining_traces_with_unknown_batch_size():
    fn = tf.function(lambda y, s: mine_quadruplets(y, s, "per_pair").indices,
                     input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.float32)])
    rng = np.random.default_rng(1)
    labels, scores = _batch(rng, 12, 4)
    assert sorted(map(tuple, fn(labels, scores).numpy().tolist())) == brute_force(labels, scores, "per_pair")


def test_score_gap_matches_numpy():
    rng = np.random.default_rng(2)
    labels, scores = _batch(rng, 10, 3)
    same = labels[:, None] == labels[None, :]
    pos = same & ~np.eye(10, dtype=bool)
    expected = scores[pos].mean() - scores[~same].mean()
    np.testing.assert_allclose(score_gap(labels, scores).numpy(), expected, rtol=1e-5)


def test_bad_labels_and_mode():
    scores = np.zeros((4, 4), np.float32)
    with pytest.raises(TypeError, match="integer"):
        mine_quadruplets(np.zeros(4, np.float32), scores)
    with pytest.raises(ValueError, match="shape"):
        mine_quadruplets(np.zeros((4, 1), np.int32), scores)
    with pytest.raises(ValueError, match="mining mode"):
        mine_quadruplets(np.zeros(4, np.int32), scores, "random")
