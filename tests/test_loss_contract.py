"""The loss contract (issue 30 item 1): every embedding loss takes distance= and reducer=, refuses a
distance that makes no sense for it, has one from_indices signature, takes a reference set, and keeps
the old spellings for one release with a DeprecationWarning. Values against numpy brute force."""

import inspect
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf.losses import (
    ContrastiveLoss,
    DoubleHeaderHingeLoss,
    LiftedStructuredLoss,
    MarginLoss,
    MultiSimilarityLoss,
    NPairLoss,
    PairLoss,
    TripletLoss,
)
from pddm_tf.miners import BatchHardMiner, DistanceWeightedMiner, QuadrupletMiner, Tuples

LOSSES = [ContrastiveLoss, DoubleHeaderHingeLoss, LiftedStructuredLoss, MarginLoss, MultiSimilarityLoss, NPairLoss,
          TripletLoss]
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 3], np.int32)


def _unit(seed=0, m=8, d=5):
    x = np.random.default_rng(seed).normal(size=(m, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _cos(x, y):
    return x.astype(np.float64) @ y.astype(np.float64).T


def _euclid(x, y):
    return np.sqrt(((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1))


@pytest.mark.parametrize("cls", LOSSES)
def test_every_embedding_loss_takes_distance_and_reducer_and_states_its_defaults(cls):
    parameters = inspect.signature(cls.__init__).parameters
    assert {"distance", "reducer"} <= set(parameters)
    loss = cls()
    assert loss.distance.name == cls.default_distance and loss.reducer.name == cls.default_reducer
    doc = inspect.getdoc(cls)
    assert f'"{cls.default_reducer}"' in doc or cls.default_reducer.replace("_", "") in doc.lower()


def test_a_distance_that_makes_no_sense_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"MultiSimilarityLoss needs a similarity; EuclideanDistance\(\) is a "
                                         r"distance \(smaller is closer\)"):
        MultiSimilarityLoss(distance="euclidean")
    with pytest.raises(ValueError, match="on a similarity needs neg_margin < pos_margin"):
        ContrastiveLoss(distance="cosine_similarity")  # margins on the distance scale
    with pytest.raises(ValueError, match="unknown distance 'hamming'"):
        TripletLoss(distance="hamming")
    with pytest.raises(ValueError, match="miner must be a QuadrupletMiner"):
        DoubleHeaderHingeLoss(miner="batch_hard")
    with pytest.raises(ValueError, match="TripletLoss needs a miner"):
        TripletLoss(miner=None)


def test_triplet_loss_on_a_similarity_and_non_default_reducers_equal_numpy():
    x = _unit(1)
    s = _cos(x, x)
    same = LABELS[:, None] == LABELS[None]
    positive, negative = same & ~np.eye(8, dtype=bool), ~same
    expected_hinges = []
    for a in range(8):  # batch-hard on cosine similarity: least similar positive, most similar negative
        if positive[a].any() and negative[a].any():
            p = np.where(positive[a], s[a], np.inf).argmin()
            n = np.where(negative[a], s[a], -np.inf).argmax()
            expected_hinges.append(max(0.0, 0.3 + s[a, n] - s[a, p]))
    hinges = np.array(expected_hinges)
    for reducer, expected in [("mean", hinges.mean()), ("sum", hinges.sum()),
                              ("avg_non_zero", hinges.sum() / max((hinges > 0).sum(), 1))]:
        loss = TripletLoss(margin=0.3, miner="batch_hard", distance="cosine_similarity", reducer=reducer)
        np.testing.assert_allclose(float(loss(LABELS, x)), expected, rtol=1e-5)


def test_contrastive_loss_on_cosine_similarity_and_a_mean_reducer_equal_numpy():
    x = _unit(2)
    s = _cos(x, x)
    same = LABELS[:, None] == LABELS[None]
    positive, negative = same & ~np.eye(8, dtype=bool), ~same
    pull, push = np.maximum(0.9 - s, 0) ** 2, np.maximum(s - 0.2, 0) ** 2
    loss = ContrastiveLoss(pos_margin=0.9, neg_margin=0.2, distance="cosine_similarity", reducer="mean")
    np.testing.assert_allclose(float(loss(LABELS, x)), pull[positive].mean() + push[negative].mean(), rtol=1e-5)


def test_margin_and_npair_losses_on_their_other_distance_kind_equal_numpy():
    x = _unit(3)
    s = _cos(x, x)
    rows = np.array([[0, 1, 3], [3, 4, 0], [5, 6, 7]], np.int32)
    beta, alpha = 0.4, 0.2
    hinges = np.concatenate([np.maximum(beta - s[rows[:, 0], rows[:, 1]] + alpha, 0),
                             np.maximum(s[rows[:, 0], rows[:, 2]] - beta + alpha, 0)])
    loss = MarginLoss(alpha=alpha, beta=beta, nu=0.1, miner="closest_beyond_cutoff", distance="cosine_similarity")
    expected = (hinges.sum() + 0.1 * beta * 3) / max((hinges > 0).sum(), 1)
    np.testing.assert_allclose(float(loss.from_indices(LABELS, x, Tuples.from_rows(rows))), expected, rtol=1e-5)
    # N-pair on Euclidean distances: logits -D between the first two samples of each class.
    anchors, positives = np.array([0, 3, 5]), np.array([1, 4, 6])
    logits = -_euclid(x[anchors], x[positives])
    cross_entropy = np.log(np.exp(logits).sum(1)) - np.diag(logits)
    np.testing.assert_allclose(float(NPairLoss(distance="euclidean")(LABELS, x)), cross_entropy.mean(), rtol=1e-5)


# -- reference embeddings ---------------------------------------------------------------------------

REF = _unit(9, m=6)
REF_LABELS = np.array([0, 1, 1, 2, 4, 4], np.int32)


def test_triplet_and_contrastive_losses_take_positives_and_negatives_from_a_reference_set():
    x = _unit(4)
    d = _euclid(x, REF)
    same = LABELS[:, None] == REF_LABELS[None]
    hinges = [max(0.0, 0.2 + d[a][same[a]].max() - d[a][~same[a]].min()) for a in range(8)
              if same[a].any() and (~same[a]).any()]
    loss = TripletLoss(miner="batch_hard")
    np.testing.assert_allclose(float(loss.compute(LABELS, x, REF, REF_LABELS)), np.mean(hinges), rtol=1e-5)
    # The Keras entry takes the reference set in the y_pred dict.
    value = loss(LABELS, {"embeddings": x, "ref_embeddings": REF, "ref_labels": REF_LABELS})
    np.testing.assert_allclose(float(value), np.mean(hinges), rtol=1e-5)
    pull, push = np.maximum(d - 0.1, 0) ** 2, np.maximum(0.9 - d, 0) ** 2
    expected = pull[same & (pull > 0)].mean() + push[~same & (push > 0)].mean()
    contrastive = ContrastiveLoss(pos_margin=0.1, neg_margin=0.9)
    np.testing.assert_allclose(float(contrastive.compute(LABELS, x, REF, REF_LABELS)), expected, rtol=1e-5)


def test_lifted_and_multi_similarity_losses_take_a_reference_set():
    x = _unit(5)
    d, s = _euclid(x, REF), _cos(x, REF)
    same = LABELS[:, None] == REF_LABELS[None]
    row = np.array([np.log(np.exp(1.0 - d[i][~same[i]]).sum()) for i in range(8)])
    column = np.array([np.log(np.exp(1.0 - d[:, j][~same[:, j]]).sum()) for j in range(6)])
    terms = [max(0.0, np.logaddexp(row[i], column[j]) + d[i, j]) ** 2 for i, j in zip(*np.where(same))]
    np.testing.assert_allclose(float(LiftedStructuredLoss().compute(LABELS, x, REF, REF_LABELS)),
                               0.5 * np.mean(terms), rtol=1e-5)
    per_anchor = []  # multi-similarity with its own mining, every (anchor, reference) pair
    for i in range(8):
        pos, neg = s[i][same[i]], s[i][~same[i]]
        if not len(pos) or not len(neg):
            per_anchor.append(0.0)
            continue
        kept_pos, kept_neg = pos[pos - 0.1 < neg.max()], neg[neg + 0.1 > pos.min()]
        if not len(kept_pos) or not len(kept_neg):
            per_anchor.append(0.0)
            continue
        per_anchor.append(np.log1p(np.exp(-2 * (kept_pos - 0.5)).sum()) / 2
                          + np.log1p(np.exp(50 * (kept_neg - 0.5)).sum()) / 50)
    np.testing.assert_allclose(float(MultiSimilarityLoss().compute(LABELS, x, REF, REF_LABELS)),
                               np.mean(per_anchor), rtol=1e-4)


def test_losses_that_pair_within_one_batch_refuse_a_reference_set():
    for loss in (NPairLoss(), DoubleHeaderHingeLoss()):
        with pytest.raises(ValueError, match="pairs samples within one batch"):
            loss.compute(LABELS, _unit(), REF, REF_LABELS)
    with pytest.raises(ValueError, match="ref_embeddings and ref_labels go together"):
        TripletLoss().compute(LABELS, _unit(), REF)


# -- one index type, one from_indices -----------------------------------------------------------------

def test_tuples_convert_between_pairs_triplets_and_quadruplets():
    pairs = Tuples.from_pairs([0, 0, 3], [1, 2, 4], [0, 3, 3, 5], [5, 0, 1, 0])
    a1, p, a2, n = (t.numpy().tolist() for t in pairs.pairs())
    assert (a1, p, a2, n) == ([0, 0, 3], [1, 2, 4], [0, 3, 3, 5], [5, 0, 1, 0])
    expected = sorted((a, pp, nn) for a, pp in zip(a1, p) for aa, nn in zip(a2, n) if a == aa)
    assert sorted(map(tuple, pairs.to_triplets().rows().numpy().tolist())) == expected
    with pytest.raises(ValueError, match="needs the triplet form"):
        pairs.rows()
    triplets = Tuples.from_triplets([0, 3], [1, 4], [5, 0])
    assert [t.numpy().tolist() for t in triplets.pairs()] == [[0, 3], [1, 4], [0, 3], [5, 0]]
    quadruplets = np.array([[0, 1, 3, 5], [3, 4, 1, 0]], np.int32)
    tuples = Tuples.from_quadruplets(quadruplets)
    assert tuples.rows().numpy().tolist() == [[0, 1, 3], [3, 4, 1], [1, 0, 5], [4, 3, 0]]
    np.testing.assert_array_equal(tuples.as_quadruplets().numpy(), quadruplets)


@pytest.mark.parametrize("make", [
    lambda: ContrastiveLoss(miner="batch_hard"), lambda: LiftedStructuredLoss(miner="semi_hard"),
    lambda: MarginLoss(miner="closest_beyond_cutoff"), lambda: MultiSimilarityLoss(miner="batch_hard"),
    NPairLoss, TripletLoss, lambda: DoubleHeaderHingeLoss(miner=QuadrupletMiner("per_pair")),
], ids=["contrastive", "lifted", "margin", "multi_similarity", "npair", "triplet", "double_header"])
def test_from_indices_has_one_signature_and_equals_the_mined_loss(make):
    loss, x = make(), _unit(6)
    from_indices = inspect.signature(type(loss).from_indices).parameters
    assert list(from_indices)[:6] == ["self", "labels", "embeddings", "tuples", "ref_embeddings", "ref_labels"]
    tuples = loss.mine(loss._batch(LABELS, x, None, None))
    np.testing.assert_allclose(float(loss.from_indices(LABELS, x, tuples)), float(loss(LABELS, x)), rtol=1e-5)


# -- old spellings (issue 30 item 7) --------------------------------------------------------------------

def test_each_old_spelling_works_with_a_deprecation_warning_naming_the_new_one():
    x = tf.constant(_unit(7))
    with pytest.warns(DeprecationWarning, match=r"miner=QuadrupletMiner\('hardest'\)"):
        old = DoubleHeaderHingeLoss(mining="hardest")
    assert old.miner == QuadrupletMiner("hardest") and old.mining == "hardest"
    assert float(old(LABELS, x)) == float(DoubleHeaderHingeLoss(miner=QuadrupletMiner("hardest"))(LABELS, x))
    assert DoubleHeaderHingeLoss.from_config({"mining": "hardest"}).miner == QuadrupletMiner("hardest")
    with pytest.warns(DeprecationWarning, match=r"use TripletLoss\(miner=...\)"):
        old_triplet = TripletLoss(mining="batch_hard")
    assert old_triplet.miner == BatchHardMiner()
    d = tf.sqrt(tf.maximum(tf.constant(_euclid(_unit(7), _unit(7)) ** 2, tf.float32), 1e-12))
    d = tf.linalg.set_diag(d, tf.zeros(8))
    for loss in (TripletLoss(miner="batch_hard"), ContrastiveLoss(miner="batch_hard"),
                 LiftedStructuredLoss(miner="batch_hard"), MultiSimilarityLoss(miner="batch_hard")):
        tuples = BatchHardMiner()(LABELS, x)
        new = float(loss.from_indices(LABELS, x, tuples))
        with pytest.warns(DeprecationWarning, match=r"call from_indices\(labels, embeddings, tuples\)"):
            assert float(loss.from_indices(tuples, embeddings=x)) == pytest.approx(new, rel=1e-5)
        if not isinstance(loss, MultiSimilarityLoss):  # the cosine loss needed embeddings already
            with pytest.warns(DeprecationWarning):
                assert float(loss.from_indices(tuples, distances=d)) == pytest.approx(new, rel=1e-4)
    margin, tuples = MarginLoss(miner="closest_beyond_cutoff"), BatchHardMiner()(LABELS, x)
    with pytest.warns(DeprecationWarning):
        assert float(margin.from_indices(LABELS, tuples, d)) == pytest.approx(
            float(margin.from_indices(LABELS, x, tuples)), rel=1e-4)
    quadruplet = DoubleHeaderHingeLoss()
    tuples = quadruplet.miner(LABELS, x)
    s_ap, s_an = tf.ones(tuples.count), tf.zeros(tuples.count)
    with pytest.warns(DeprecationWarning, match=r"call quadruplet_terms\(embeddings, tuples, s_ap, s_an\)"):
        terms = quadruplet.from_indices(x, tuples, s_ap, s_an)
    assert float(terms.total) == float(quadruplet.quadruplet_terms(x, tuples, s_ap, s_an).total)


# -- bad values (issue 34 item 10) ----------------------------------------------------------------------

def _float_arguments(cls):
    return [name for name, p in inspect.signature(cls.__init__).parameters.items() if isinstance(p.default, float)]


@pytest.mark.parametrize("cls", LOSSES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_hyperparameters_are_refused_naming_the_argument(cls, bad):
    names = _float_arguments(cls)
    assert names
    for name in names:
        with pytest.raises(ValueError, match=rf"{cls.__name__}: {name} must be a finite number, got {bad}"):
            cls(**{name: bad})


def test_numpy_float_hyperparameters_are_accepted():
    assert TripletLoss(margin=np.float32(0.25)).margin == 0.25
    with pytest.raises(ValueError, match="TripletLoss: margin must be a finite number, got '0.2'"):
        TripletLoss(margin="0.2")


def test_non_integer_labels_are_refused_and_integral_float_labels_accepted():
    x = _unit(8, m=4)
    loss = TripletLoss(miner="batch_hard")
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be integer class ids"):
        loss(np.array([0.4, 0.6, 1.0, 1.0], np.float32), x)
    traced = tf.function(lambda y, e: loss(y, e))
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be integer class ids"):
        traced(tf.constant([0.4, 0.6, 1.0, 1.0]), x)
    assert float(loss(np.array([0.0, 0.0, 1.0, 1.0], np.float32), x)) == float(loss(np.array([0, 0, 1, 1]), x))


@pytest.mark.parametrize("make", [ContrastiveLoss, LiftedStructuredLoss, MultiSimilarityLoss, NPairLoss,
                                  TripletLoss, lambda: TripletLoss(miner="batch_hard"), DoubleHeaderHingeLoss,
                                  lambda: DoubleHeaderHingeLoss(miner=QuadrupletMiner("hardest")),
                                  lambda: MarginLoss(miner=DistanceWeightedMiner(seed=1)),
                                  lambda: MarginLoss(miner="closest_beyond_cutoff")])
def test_an_empty_batch_gives_zero_eagerly_and_in_a_graph(make):
    loss = make()
    labels, embeddings = tf.zeros([0], tf.int32), tf.zeros([0, 4])
    assert float(loss(labels, embeddings)) == 0.0
    traced = tf.function(lambda y, e: loss(y, e),
                         input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 4])])
    assert float(traced(labels, embeddings)) == 0.0
    # The same traced function on a batch equals a fresh loss's eager value there (seeded draws alike).
    batch = (tf.constant([0, 1, 0, 1, 0, 1]), tf.constant(_unit(0, m=6, d=4)))
    value, fresh = float(make()(*batch)), make()
    assert value > 0.0
    assert float(tf.function(lambda y, e: fresh(y, e), input_signature=traced.input_signature)(*batch)) == (
        pytest.approx(value, rel=1e-5))


def test_a_loss_config_names_its_distance_reducer_and_miner():
    loss = ContrastiveLoss(pos_margin=0.8, neg_margin=0.1, distance="cosine_similarity", reducer="sum",
                           miner="batch_hard")
    config = loss.get_config()
    assert config["distance"] == "cosine_similarity" and config["reducer"] == {"name": "sum", "config": {}}
    assert config["miner"] == {"name": "batch_hard", "config": {}}
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert float(copy(LABELS, _unit())) == pytest.approx(float(loss(LABELS, _unit())), rel=1e-6)


def test_a_pair_loss_subclass_written_before_the_contract_still_works_with_a_warning():
    class OldPairLoss(PairLoss):  # the pre-contract hook: a scalar from the distance matrix and masks
        def _from_masks(self, d, positive, negative):
            return tf.reduce_sum(tf.where(positive, d, 0.0)) - tf.reduce_sum(tf.where(negative, d, 0.0))

    x = _unit(10)
    d = _euclid(x, x)
    same = LABELS[:, None] == LABELS[None]
    expected = d[same & ~np.eye(8, dtype=bool)].sum() - d[~same].sum()
    with pytest.warns(DeprecationWarning, match="implement pair_terms"):
        value = float(OldPairLoss()(LABELS, x))
    assert value == pytest.approx(expected, rel=1e-4)
