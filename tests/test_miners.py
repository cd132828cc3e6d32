"""Miners compose with losses: every loss that takes `miner=` evaluates exactly the tuples it is given.

The miners' index arithmetic is checked against brute force in test_mining.py and
test_baseline_losses.py (the functions of `pddm_tf.miners.mining`); the contracts every miner keeps are in
test_contracts.py. Here: the `Tuples` layouts, losses on any miner against numpy, user miners,
configs saved before miners were objects, and miners chosen from the command line's options.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import (
    MINERS,
    BatchHardMiner,
    DistanceWeightedMiner,
    DoubleHeaderHingeLoss,
    MarginLoss,
    Miner,
    NPairLoss,
    QuadrupletMiner,
    SemiHardMiner,
    TripletLoss,
    Tuples,
    double_header_hinge,
    get_miner,
    mine_quadruplets,
    small_convnet,
)
from pddm_tf.methods import build_model
from pddm_tf.miners import ClosestBeyondCutoffMiner

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3], np.int32)


def _unit(seed: int, m: int = len(LABELS), d: int = 5) -> np.ndarray:
    f = np.random.default_rng(seed).normal(size=(m, d))
    return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)


def _distances(f: np.ndarray) -> np.ndarray:
    f = f.astype(np.float64)
    return np.sqrt(np.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 0.0))


def test_quadruplet_miner_lays_out_the_mined_quadruplets_as_two_rows_each():
    f = _unit(0)
    for mode in ("per_pair", "hardest"):
        quads = mine_quadruplets(LABELS, -_distances(f).astype(np.float32), mode).indices.numpy()
        tuples = QuadrupletMiner(mode)(LABELS, f)
        q = len(quads)
        assert int(tuples.groups) == q and q > 0
        expected = np.concatenate([quads[:, [0, 1, 2]], quads[:, [1, 0, 3]]])
        np.testing.assert_array_equal(tuples.rows().numpy(), expected)


def test_npair_miner_rows_are_every_anchor_with_every_candidate():
    tuples = get_miner("npair")(LABELS, _unit(1))
    n = int(tuples.groups)
    firsts = [int(np.flatnonzero(LABELS == c)[0]) for c in (0, 1, 2)]  # class 3 has one sample: no pair
    seconds = [int(np.flatnonzero(LABELS == c)[1]) for c in (0, 1, 2)]
    expected = [(a, p, c) for (a, p), c in itertools.product(zip(firsts, seconds), seconds)]
    assert n == 3 and tuples.rows().numpy().tolist() == [list(row) for row in expected]


def _triplet_reference(f: np.ndarray, rows: np.ndarray, margin: float) -> float:
    d = _distances(f)
    hinge = np.maximum(margin + d[rows[:, 0], rows[:, 1]] - d[rows[:, 0], rows[:, 2]], 0.0)
    return float(hinge.mean()) if len(hinge) else 0.0


@pytest.mark.parametrize("miner", ["semi_hard", "batch_hard", "closest_beyond_cutoff", "quadruplet"])
def test_triplet_loss_on_any_miner_equals_numpy_on_its_tuples(miner):
    f = _unit(2)
    loss = TripletLoss(margin=0.3, miner=miner)
    rows = get_miner(miner)(LABELS, f).rows().numpy()
    assert len(rows) > 0
    np.testing.assert_allclose(float(loss(LABELS, f)), _triplet_reference(f, rows, 0.3), rtol=1e-5, atol=1e-6)
    # The two entry points for given tuples agree with it: gathered distances, or computed per row.
    tuples = Tuples.from_rows(rows)
    np.testing.assert_allclose(float(loss.from_indices(LABELS, f, tuples)), float(loss(LABELS, f)), rtol=1e-5)


def test_a_seeded_miner_draws_the_same_tuples_in_and_out_of_a_loss():
    f = _unit(3)
    loss = TripletLoss(miner=DistanceWeightedMiner(seed=4))
    rows = DistanceWeightedMiner(seed=4)(LABELS, f).rows().numpy()
    np.testing.assert_allclose(float(loss(LABELS, f)), _triplet_reference(f, rows, 0.2), rtol=1e-5, atol=1e-6)
    assert loss.variables == loss.miner.variables and len(loss.variables) == 1  # the seed state, for checkpoints


def test_margin_loss_on_batch_hard_triplets_equals_numpy():
    f = _unit(4)
    rows = BatchHardMiner()(LABELS, f).rows().numpy()
    d = _distances(f)
    pull = np.maximum(d[rows[:, 0], rows[:, 1]] - 1.0 + 0.2, 0.0)
    push = np.maximum(1.0 - d[rows[:, 0], rows[:, 2]] + 0.2, 0.0)
    expected = (pull.sum() + push.sum()) / max((pull > 0).sum() + (push > 0).sum(), 1)
    loss = MarginLoss(alpha=0.2, beta=1.0, miner="batch_hard")
    np.testing.assert_allclose(float(loss(LABELS, f)), expected, rtol=1e-5)


def test_double_header_loss_from_indices_is_the_double_header_hinge_of_the_quadruplets():
    f = _unit(5)
    s = -_distances(f) ** 2  # Euclidean scores, as DoubleHeaderHingeLoss uses without a PDDM
    loss = DoubleHeaderHingeLoss(alpha=0.4, beta=0.3, embedding_weight=0.7)
    quads = mine_quadruplets(LABELS, s.astype(np.float32), "per_pair").indices.numpy()
    i, j, k, l = quads.T
    d2 = _distances(f) ** 2
    expected = double_header_hinge(s[i, j], s[i, k], s[j, l], d2[i, j], d2[i, k], d2[j, l], 0.4, 0.3, 0.7).total
    np.testing.assert_allclose(float(loss(LABELS, f)), float(expected), rtol=1e-5)
    assert loss.miner == QuadrupletMiner("per_pair")


def test_npair_loss_from_embeddings_takes_synthetic_candidates():
    rng = np.random.default_rng(6)
    n, d = 3, 4
    anchors, positives, candidates = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, n, d))
    rows = [np.repeat(anchors, n, 0), np.repeat(positives, n, 0), candidates.reshape(n * n, d)]
    logits = np.einsum("id,ijd->ij", anchors, candidates)
    expected = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    got = NPairLoss().from_embeddings(*[tf.constant(r, tf.float32) for r in rows], n)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


class _FarthestNegativeMiner(Miner):
    """A user's miner: every ordered positive pair with the anchor's farthest negative."""

    name = "test_farthest_negative"

    def mine(self, labels, distances, embedding_dim):
        same = tf.equal(labels[:, None], labels[None, :])
        positive = same & ~tf.eye(tf.shape(labels)[0], dtype=tf.bool)
        farthest = tf.argmax(tf.where(same, -1.0, distances), axis=1, output_type=tf.int32)
        valid = positive & tf.reduce_any(~same, axis=1)[:, None]
        pairs = tf.cast(tf.where(valid), tf.int32)
        return Tuples(pairs[:, 0], pairs[:, 1], tf.gather(farthest, pairs[:, 0]), tf.shape(pairs)[0])


def test_a_user_miner_registers_serializes_and_is_used():
    assert MINERS["test_farthest_negative"] is _FarthestNegativeMiner
    f = _unit(7)
    loss = TripletLoss(margin=2.5, miner=_FarthestNegativeMiner())
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.miner == _FarthestNegativeMiner()
    d = _distances(f)
    rows = [(a, p, int(np.argmax(np.where(LABELS == LABELS[a], -1, d[a]))))
            for a, p in itertools.permutations(range(len(LABELS)), 2) if LABELS[a] == LABELS[p]]
    expected = _triplet_reference(f, np.array(rows), 2.5)
    np.testing.assert_allclose(float(restored(LABELS, f)), expected, rtol=1e-5)

    class Unnamed(Miner):
        def mine(self, labels, distances, embedding_dim):
            raise AssertionError("never called")

    with pytest.raises(ValueError, match="has no registered name"):
        TripletLoss(miner=Unnamed())
    with pytest.raises(ValueError, match="unknown miner 'hardest_ever'"):
        TripletLoss(miner="hardest_ever")
    with pytest.raises(ValueError, match="already registered"):
        type("Clash", (Miner,), {"name": "semi_hard"})


def test_configs_saved_before_miners_were_objects_still_load():
    f = _unit(8)
    old_triplet = {"name": "triplet_loss", "reduction": "sum_over_batch_size", "margin": 0.3, "mining": "batch_hard",
                   "distance": "euclidean"}
    assert TripletLoss.from_config(old_triplet).miner == BatchHardMiner()
    old_margin = {"name": "margin_loss", "reduction": "sum_over_batch_size", "alpha": 0.2, "beta": 1.2,
                  "learn_beta": True, "num_classes": None, "nu": 0.0, "cutoff": 0.4, "nonzero_loss_cutoff": 1.3,
                  "seed": 2, "sampler": "distance_weighted"}
    restored = MarginLoss.from_config(old_margin)
    assert restored.miner == DistanceWeightedMiner(0.4, 1.3, seed=2)
    expected = MarginLoss(miner=DistanceWeightedMiner(0.4, 1.3, seed=2))(LABELS, f)
    assert float(restored(LABELS, f)) == pytest.approx(float(expected), rel=1e-6)
    old_dc = {**old_margin, "sampler": "closest_beyond_cutoff", "seed": None}
    assert MarginLoss.from_config(old_dc).miner == ClosestBeyondCutoffMiner(0.4)


def test_the_command_line_options_choose_a_miner():
    def net():
        return small_convnet(16, 1, width=4, depth=2)

    model = build_model("margin", net(), 8, loss_options={"miner": "closest_beyond_cutoff"})
    assert model.embedding_loss.miner == ClosestBeyondCutoffMiner()
    model = build_model("margin", net(), 8, loss_options={"miner": {"name": "distance_weighted",
                                                                    "config": {"seed": 3, "cutoff": 0.6}}})
    assert model.embedding_loss.miner == DistanceWeightedMiner(cutoff=0.6, seed=3)
    assert build_model("margin", net(), 8).embedding_loss.miner == DistanceWeightedMiner(seed=0)  # reproducible
    assert build_model("triplet_semihard", net(), 8).embedding_loss.miner == SemiHardMiner()
    with pytest.raises(ValueError, match="miner=3 is an integer; expected a string or a JSON object"):
        build_model("margin", net(), 8, loss_options={"miner": 3})
