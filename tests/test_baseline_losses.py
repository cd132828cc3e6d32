"""Baseline losses against brute-force numpy references; their miners; beta; serialization; replicas."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import (
    ContrastiveLoss,
    LiftedStructuredLoss,
    MarginLoss,
    MetricLossModel,
    MultiSimilarityLoss,
    NPairLoss,
    TripletLoss,
    small_convnet,
)
from pddm_tf.distances import pairwise_distances
from pddm_tf.miners import ClosestBeyondCutoffMiner, DistanceWeightedMiner, Tuples
from pddm_tf.miners.mining import closest_negatives_beyond_cutoff, distance_weighted_negatives, semi_hard_negatives

# -- brute-force references (float64, explicit loops over pairs and triplets) -----------------


def _dist(f, i, j):
    return float(np.linalg.norm(f[i] - f[j]))


def _mean(values):
    return float(np.mean(values)) if values else 0.0


def ref_contrastive(f, y, pos_margin, neg_margin):
    pull, push = [], []
    for i, j in itertools.permutations(range(len(y)), 2):
        d = _dist(f, i, j)
        if y[i] == y[j]:
            pull.append(max(0.0, d - pos_margin) ** 2)
        else:
            push.append(max(0.0, neg_margin - d) ** 2)
    return _mean([v for v in pull if v > 0]) + _mean([v for v in push if v > 0])


def _semi_hard_negative_distance(f, y, a, p):
    """TFA: the smallest D_an > D_ap, else the largest D_an; None if a has no negative."""
    negatives = [_dist(f, a, n) for n in range(len(y)) if y[n] != y[a]]
    if not negatives:
        return None
    farther = [d for d in negatives if d > _dist(f, a, p)]
    return min(farther) if farther else max(negatives)


def ref_triplet(f, y, margin, mining):
    losses = []
    for a in range(len(y)):
        positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        if not negatives:
            continue
        if mining == "semi_hard":
            for p in positives:
                losses.append(max(0.0, margin + _dist(f, a, p) - _semi_hard_negative_distance(f, y, a, p)))
        elif positives:
            d_ap = max(_dist(f, a, p) for p in positives)
            d_an = min(_dist(f, a, n) for n in negatives)
            losses.append(max(0.0, margin + d_ap - d_an))
    return _mean(losses)


def ref_lifted(f, y, margin):
    terms = []
    for i, j in itertools.combinations(range(len(y)), 2):
        if y[i] != y[j]:
            continue
        total = sum(np.exp(margin - _dist(f, i, k)) for k in range(len(y)) if y[k] != y[i])
        total += sum(np.exp(margin - _dist(f, j, k)) for k in range(len(y)) if y[k] != y[j])
        if total > 0:
            terms.append(max(0.0, np.log(total) + _dist(f, i, j)) ** 2)
    return sum(terms) / (2 * len(terms)) if terms else 0.0


def ref_npair(f, y, l2_reg):
    first, second = {}, {}
    for i, label in enumerate(y):
        if label not in first:
            first[label] = i
        elif label not in second:
            second[label] = i
    classes = sorted(second, key=lambda c: first[c])
    if not classes:
        return 0.0
    anchors, positives = f[[first[c] for c in classes]], f[[second[c] for c in classes]]
    losses = []
    for i in range(len(classes)):
        logits = [float(anchors[i] @ positives[j]) for j in range(len(classes))]
        losses.append(-logits[i] + np.log(sum(np.exp(v) for v in logits)))
    norms = np.mean([a @ a for a in anchors]) + np.mean([p @ p for p in positives])
    return float(np.mean(losses)) + 0.25 * l2_reg * norms


def ref_margin(f, y, triplets, alpha, beta, nu):
    """beta: a float, or an array indexed by the anchor's label."""
    total, nonzero = 0.0, 0
    for a, p, n in triplets:
        b = beta if np.isscalar(beta) else beta[y[a]]
        pull = max(0.0, _dist(f, a, p) - b + alpha)
        push = max(0.0, b - _dist(f, a, n) + alpha)
        total += pull + push + nu * b
        nonzero += int(pull > 0) + int(push > 0)  # not np.bool_ + np.bool_, which is "or"
    return total / max(nonzero, 1)


def ref_multi_similarity(f, y, alpha, beta, base, epsilon):
    s = f @ f.T
    total = 0.0
    for i in range(len(y)):
        positives = [s[i, j] for j in range(len(y)) if j != i and y[j] == y[i]]
        negatives = [s[i, k] for k in range(len(y)) if y[k] != y[i]]
        if not positives or not negatives:
            continue
        kept_negatives = [v for v in negatives if v + epsilon > min(positives)]
        kept_positives = [v for v in positives if v - epsilon < max(negatives)]
        if not kept_negatives or not kept_positives:
            continue
        total += np.log(1 + sum(np.exp(-alpha * (v - base)) for v in kept_positives)) / alpha
        total += np.log(1 + sum(np.exp(beta * (v - base)) for v in kept_negatives)) / beta
    return total / len(y)


# -- cases -------------------------------------------------------------------------------------


def _unit(rng, m, d):
    x = rng.normal(size=(m, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _label_cases():
    rng = np.random.default_rng(7)
    yield "random", rng.integers(0, 4, size=14)
    yield "singleton", np.array([2, 0, 0, 5, 1, 1, 1, 0, 2, 3, 2])  # classes 3 and 5 have one image
    yield "all_distinct", np.arange(9)  # no positive pair
    yield "one_class", np.zeros(9, np.int64)  # no negative
    yield "one_image", np.array([3])  # no pair at all


LABEL_CASES = dict(_label_cases())

# name -> (loss, reference(f, y))
LOSSES = {
    "contrastive": (ContrastiveLoss(0.1, 0.9), lambda f, y: ref_contrastive(f, y, 0.1, 0.9)),
    "triplet_semi_hard": (TripletLoss(0.3, "semi_hard"), lambda f, y: ref_triplet(f, y, 0.3, "semi_hard")),
    "triplet_batch_hard": (TripletLoss(0.3, "batch_hard"), lambda f, y: ref_triplet(f, y, 0.3, "batch_hard")),
    "lifted": (LiftedStructuredLoss(1.0), lambda f, y: ref_lifted(f, y, 1.0)),
    "npair": (NPairLoss(0.01), lambda f, y: ref_npair(f, y, 0.01)),
    "multi_similarity": (MultiSimilarityLoss(2.0, 10.0, 0.3, 0.2),
                         lambda f, y: ref_multi_similarity(f, y, 2.0, 10.0, 0.3, 0.2)),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_equals_brute_force_reference(name, case):
    y = LABEL_CASES[case]
    f = _unit(np.random.default_rng(len(y) + len(name)), len(y), 6)
    loss, reference = LOSSES[name]
    expected = reference(f, y)
    value = loss(y.astype(np.int32), f.astype(np.float32)).numpy()
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    # No valid pair or triplet gives exactly 0. Contrastive loss still pushes the negatives of a
    # batch without positives (and pulls the positives of a one-class batch); npair's N = 1 leaves
    # only the l2_reg / 2 of unit embeddings.
    no_valid = {"one_image"} if name == "contrastive" else {"one_image", "all_distinct", "one_class"}
    if case in no_valid and not (name == "npair" and case == "one_class"):
        assert value == 0.0


@pytest.mark.parametrize("name", list(LOSSES) + ["margin"])
def test_gradients_finite_and_traceable_with_unknown_batch(name):
    loss = MarginLoss(miner=DistanceWeightedMiner(seed=0)) if name == "margin" else LOSSES[name][0]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 6], tf.float32)])
    def loss_and_grad(y, f):
        with tf.GradientTape() as tape:
            tape.watch(f)
            value = loss(y, f)
        return value, tf.convert_to_tensor(tape.gradient(value, f))  # npair: IndexedSlices

    for y in (LABEL_CASES["singleton"], LABEL_CASES["one_image"]):
        f = _unit(np.random.default_rng(1), len(y), 6).astype(np.float32)
        value, grad = loss_and_grad(y.astype(np.int32), f)
        assert np.isfinite(value.numpy()) and np.all(np.isfinite(grad.numpy()))
    assert value.numpy() == 0.0 and not np.any(grad.numpy())  # one image: nothing to learn


# -- pair losses on a miner's tuples: only the pairs the tuples name -----------------------------


def ref_pairs(tuples):
    """The (anchor, positive) and (anchor, negative) pairs that index tuples name, as sets."""
    rows = tuples.rows().numpy()
    return {(a, p) for a, p, _ in rows}, {(a, n) for a, _, n in rows}


def ref_contrastive_pairs(f, positives, negatives, pos_margin, neg_margin):
    pull = [max(0.0, _dist(f, i, j) - pos_margin) ** 2 for i, j in positives]
    push = [max(0.0, neg_margin - _dist(f, i, j)) ** 2 for i, j in negatives]
    return _mean([v for v in pull if v > 0]) + _mean([v for v in push if v > 0])


def ref_lifted_pairs(f, positives, negatives, margin):
    """1 / (2 |P|) sum_{(i, j) in P} max(0, J_ij)^2 over the named ordered positive pairs whose anchor
    has a named negative, N(i) being the negatives named with anchor i."""
    def negative_sum(i):
        return sum(np.exp(margin - _dist(f, a, k)) for a, k in negatives if a == i)

    terms = [max(0.0, np.log(negative_sum(i) + negative_sum(j)) + _dist(f, i, j)) ** 2
             for i, j in positives if any(a == i for a, _ in negatives)]
    return sum(terms) / (2 * len(terms)) if terms else 0.0


def ref_multi_similarity_pairs(f, positives, negatives, alpha, beta, base):
    s = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (f / np.linalg.norm(f, axis=1, keepdims=True)).T
    total = 0.0
    for i in range(len(f)):
        kept_positives = [s[i, j] for a, j in positives if a == i]
        kept_negatives = [s[i, k] for a, k in negatives if a == i]
        if kept_positives and kept_negatives:
            total += np.log(1 + sum(np.exp(-alpha * (v - base)) for v in kept_positives)) / alpha
            total += np.log(1 + sum(np.exp(beta * (v - base)) for v in kept_negatives)) / beta
    return total / len(f)


# name -> (loss class, arguments, reference(f, positive pairs, negative pairs))
PAIR_LOSSES = {
    "contrastive": (ContrastiveLoss, {"pos_margin": 0.1, "neg_margin": 0.9},
                    lambda f, p, n: ref_contrastive_pairs(f, p, n, 0.1, 0.9)),
    "lifted": (LiftedStructuredLoss, {"margin": 1.0}, lambda f, p, n: ref_lifted_pairs(f, p, n, 1.0)),
    "multi_similarity": (MultiSimilarityLoss, {"alpha": 2.0, "beta": 10.0, "base": 0.3},
                         lambda f, p, n: ref_multi_similarity_pairs(f, p, n, 2.0, 10.0, 0.3)),
}


@pytest.mark.parametrize("miner", ["batch_hard", "semi_hard"])
@pytest.mark.parametrize("case", ["random", "singleton", "all_distinct"])
@pytest.mark.parametrize("name", list(PAIR_LOSSES))
def test_pair_losses_score_the_pairs_of_a_miners_tuples(name, case, miner):
    # A pair loss composes with any miner: with miner=..., and through from_indices, it scores only
    # the pairs the tuples name. The tuples are mined on the loss's own distance (for multi-
    # similarity, the cosine distance 1 - S), as `compute` does.
    cls, arguments, reference = PAIR_LOSSES[name]
    y = LABEL_CASES[case].astype(np.int32)
    f = (_unit(np.random.default_rng(len(y)), len(y), 6) * 1.3).astype(np.float32)  # not unit: S is cosine
    loss = cls(**arguments, miner=miner)
    if name == "multi_similarity":
        unit = f / np.linalg.norm(f, axis=1, keepdims=True)
        distances = 1.0 - unit @ unit.T
    else:
        distances = loss.distance.pairwise(tf.constant(f))
    tuples = loss.miner(y, f, tf.constant(distances))
    expected = reference(f.astype(np.float64), *ref_pairs(tuples))
    np.testing.assert_allclose(loss(y, f).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cls(**arguments).from_indices(y, tf.constant(f), tuples).numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    if case == "all_distinct":  # no positive pair, so no tuple: nothing to score, even for contrastive
        assert expected == 0.0 and ref_pairs(tuples) == (set(), set())


# -- margin loss: deterministic part, sampling, beta ---------------------------------------------


@pytest.mark.parametrize("num_classes", [None, 6])
@pytest.mark.parametrize("case", ["random", "singleton"])
def test_margin_loss_equals_reference_on_its_sampled_triplets(num_classes, case, monkeypatch):
    y = LABEL_CASES[case].astype(np.int32)
    f = _unit(np.random.default_rng(3), len(y), 6)
    loss = MarginLoss(alpha=0.3, beta=0.9, num_classes=num_classes, nu=0.05, miner=DistanceWeightedMiner(seed=1))
    if num_classes:
        loss.beta.assign(np.linspace(0.6, 1.1, num_classes))
    beta = loss.beta.numpy().astype(np.float64)
    sampled = []
    sample = loss.miner.mine
    monkeypatch.setattr(loss.miner, "mine", lambda *args: sampled.append(sample(*args)) or sampled[-1])
    value = loss(y, f.astype(np.float32)).numpy()
    triplets = sampled[0].rows().numpy()
    assert len(triplets) == sum(y[a] == y[p] for a, p in itertools.permutations(range(len(y)), 2))
    np.testing.assert_allclose(value, ref_margin(f, y, triplets, 0.3, beta, 0.05), rtol=1e-5)
    # The deterministic entry point agrees, and gives 0 for no triplet.
    f32 = f.astype(np.float32)
    np.testing.assert_allclose(loss.from_indices(y, f32, Tuples.from_rows(triplets)).numpy(), value, rtol=1e-5)
    assert loss.from_indices(y, f32, Tuples.from_rows(np.zeros((0, 3), np.int32))).numpy() == 0.0


def test_margin_loss_no_triplet_is_zero():
    f = _unit(np.random.default_rng(0), 6, 4).astype(np.float32)
    for y in (np.arange(6), np.zeros(6)):
        assert MarginLoss()(y.astype(np.int32), f).numpy() == 0.0


def test_semi_hard_negatives_satisfy_definition():
    y = LABEL_CASES["singleton"]
    f = _unit(np.random.default_rng(5), len(y), 3)  # low dimension: many "no farther negative" cases
    negatives, has_negative = semi_hard_negatives(y.astype(np.int32), pairwise_distances(f))
    negatives, has_negative = negatives.numpy(), has_negative.numpy()
    assert has_negative.all()
    fallbacks = 0
    for a, p in itertools.permutations(range(len(y)), 2):
        if y[a] != y[p]:
            continue
        n = negatives[a, p]
        expected = _semi_hard_negative_distance(f, y, a, p)
        assert y[n] != y[a]
        np.testing.assert_allclose(_dist(f, a, n), expected, rtol=1e-5)
        fallbacks += expected <= _dist(f, a, p)
    assert 0 < fallbacks  # the "farthest negative" branch was exercised too


def _anchor_with_negatives_at(distances, dim=8, copies=100, seed=0):
    """Anchor e_0 with `copies - 1` identical positives and one negative per distance (own class)."""
    rng = np.random.default_rng(seed)
    anchor = np.eye(dim)[0]
    negatives = []
    for d in distances:
        u = rng.normal(size=dim)
        u[0] = 0.0
        u /= np.linalg.norm(u)
        cos = 1.0 - d * d / 2.0  # ||e_0 - x|| = d for x = cos e_0 + sin u
        negatives.append(cos * anchor + np.sqrt(1.0 - cos * cos) * u)
    f = np.vstack([np.tile(anchor, (copies, 1)), negatives]).astype(np.float32)
    y = np.concatenate([np.zeros(copies), 1 + np.arange(len(distances))]).astype(np.int32)
    return f, y


def _empirical_vs_target(distances, dim, target):
    """TV distance between the negatives drawn for the anchor's copies and `target` (one per negative)."""
    f, y = _anchor_with_negatives_at(distances, dim)
    d = pairwise_distances(f)
    draws = []
    for call in range(3):  # 3 x 100 anchors x 99 positives = 29,700 draws from the same distribution
        triplets = distance_weighted_negatives(y, d, dim, 0.5, 1.4, seed=tf.constant([11, call])).numpy()
        assert np.all(y[triplets[:, 2]] != y[triplets[:, 0]])  # every draw is a negative of its anchor
        draws.append(triplets[y[triplets[:, 0]] == 0, 2] - 100)
    draws = np.concatenate(draws)
    assert len(draws) == 3 * 100 * 99
    empirical = np.bincount(draws, minlength=len(distances)) / len(draws)
    return 0.5 * np.abs(empirical - target).sum(), empirical


def test_distance_weighted_sampling_matches_inverse_density():
    dim, distances = 8, np.array([0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.39, 1.45, 1.9])
    clipped = np.maximum(distances, 0.5)
    log_q = (dim - 2) * np.log(clipped) + (dim - 3) / 2 * np.log(1 - clipped ** 2 / 4)
    weights = np.where(distances < 1.4, np.exp(-log_q), 0.0)
    target = weights / weights.sum()
    # With ~30k draws the sampling noise of the TV distance is about 0.005; 0.02 leaves margin yet
    # fails a sampler that ignores the cutoff (TV 0.49 here), is uniform (0.61) or keeps negatives
    # beyond nonzero_loss_cutoff (0.045, and caught exactly by the last assertion).
    tv, empirical = _empirical_vs_target(distances, dim, target)
    assert tv < 0.02, (empirical, target)
    assert empirical[distances >= 1.4].sum() == 0.0


def test_distance_weighted_sampling_falls_back_to_uniform():
    distances = np.array([1.5, 1.7, 1.9])  # no negative below nonzero_loss_cutoff
    tv, empirical = _empirical_vs_target(distances, 8, np.full(3, 1 / 3))
    assert tv < 0.02, empirical


def ref_closest_beyond_cutoff(y, d, cutoff):
    """The Divide-and-Conquer authors' sampler, one anchor at a time (see the reading in its docstring)."""
    triplets = []
    for a in range(len(y)):
        positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        beyond = sorted((n for n in negatives if d[a, n] >= cutoff), key=lambda n: (d[a, n], n))
        below = sorted((n for n in negatives if d[a, n] < cutoff), key=lambda n: (d[a, n], n))
        triplets += [(a, p, n) for p, n in zip(positives, beyond + below)]
    return np.array(triplets, np.int32).reshape(-1, 3)


@pytest.mark.parametrize("case", ["random", "singleton", "few_negatives"])
def test_closest_beyond_cutoff_sampler_equals_brute_force(case):
    rng = np.random.default_rng(7)
    if case == "few_negatives":  # six of one class, two of another: anchors with more positives than negatives
        y = np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int32)
    else:
        y = LABEL_CASES[case].astype(np.int32)
    f = _unit(rng, len(y), 3).astype(np.float32)  # 3-d: many negatives fall below the 0.5 cutoff
    d = pairwise_distances(f).numpy()
    cutoff = float(np.quantile(d[y[:, None] != y[None, :]], 0.75))  # most negatives below it: completions
    got = closest_negatives_beyond_cutoff(y, d, cutoff).numpy()
    expected = ref_closest_beyond_cutoff(y, d.astype(np.float64), cutoff)
    np.testing.assert_array_equal(got, expected)
    # The batch exercised both the regular case and the completion below the cutoff.
    below = d[got[:, 0], got[:, 2]] < cutoff
    assert below.any() and (~below).any()
    # Through the loss: the margin loss of exactly these triplets.
    loss = MarginLoss(alpha=0.2, beta=1.0, learn_beta=False, miner=ClosestBeyondCutoffMiner(cutoff))
    np.testing.assert_allclose(loss(y, f).numpy(), ref_margin(f, y, expected, 0.2, np.float64(1.0), 0.0), rtol=1e-5)
    assert MarginLoss.from_config(loss.get_config()).miner == ClosestBeyondCutoffMiner(cutoff)


def test_closest_beyond_cutoff_sampler_is_traceable():
    fn = tf.function(lambda y, d: closest_negatives_beyond_cutoff(y, d, 0.5),
                     input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.float32)])
    y = np.array([0, 0, 1, 1, 2], np.int32)
    d = pairwise_distances(_unit(np.random.default_rng(1), 5, 4).astype(np.float32)).numpy()
    np.testing.assert_array_equal(fn(y, d).numpy(), ref_closest_beyond_cutoff(y, d.astype(np.float64), 0.5))
    assert fn(np.zeros(3, np.int32), np.zeros((3, 3), np.float32)).numpy().shape == (0, 3)


def _image_batch(classes=4, per_class=4, size=16, seed=0, steps=1):
    rng = np.random.default_rng(seed)
    templates = rng.random((classes, size, size, 1)).astype(np.float32)
    labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
    images = 0.5 * rng.random((steps, len(labels), size, size, 1)).astype(np.float32) + templates[labels][None]
    return images, np.broadcast_to(labels, (steps, len(labels))).copy()


def _metric_model(loss):
    keras.utils.set_random_seed(0)
    model = MetricLossModel(small_convnet(16, 1, width=8, depth=2), loss, embedding_dim=8)
    model.build((None, 16, 16, 1))
    return model


@pytest.mark.parametrize("num_classes", [None, 6])
def test_learnable_beta_is_trained_by_metric_loss_model(num_classes):
    loss = MarginLoss(num_classes=num_classes, miner=DistanceWeightedMiner(seed=0))
    model = _metric_model(loss)
    assert any(v is loss.beta for v in model.trainable_variables)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = loss.beta.numpy().copy()
    images, labels = _image_batch(classes=4)  # classes 0..3 present; 4 and 5 absent
    model.train_on_batch(images[0], labels[0])
    after = loss.beta.numpy()
    if num_classes is None:
        assert after.shape == () and after != before
    else:
        assert after.shape == (6,)
        assert np.all(after[:4] != before[:4]) and np.all(after[4:] == before[4:])


def test_fixed_beta_is_not_trained():
    loss = MarginLoss(learn_beta=False)
    model = _metric_model(loss)
    assert all(v is not loss.beta for v in model.trainable_variables)
    assert any(v is loss.beta for v in model.non_trainable_variables)


# -- serialization, arguments, replicas ----------------------------------------------------------

SETTINGS = [
    ContrastiveLoss(pos_margin=0.05, neg_margin=0.7),
    TripletLoss(margin=0.4, miner="batch_hard"),
    LiftedStructuredLoss(margin=0.8),
    NPairLoss(l2_reg=0.002),
    MarginLoss(alpha=0.1, beta=1.0, learn_beta=False, num_classes=7, nu=0.01,
               miner=DistanceWeightedMiner(cutoff=0.4, nonzero_loss_cutoff=1.3, seed=5)),
    MultiSimilarityLoss(alpha=1.5, beta=40.0, base=0.6, epsilon=0.05),
    ContrastiveLoss(miner="batch_hard", distance="cosine"),
    LiftedStructuredLoss(miner={"name": "semi_hard", "config": {}}),
    MultiSimilarityLoss(miner="batch_hard"),
]


@pytest.mark.parametrize("loss", SETTINGS, ids=lambda loss: type(loss).__name__)
def test_serialization_round_trip(loss):
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss) and clone is not loss
    assert clone.get_config() == loss.get_config()
    if isinstance(loss, MarginLoss):
        assert clone.beta.shape == (7,) and not clone.beta.trainable


def test_bad_arguments_and_labels():
    with pytest.raises(ValueError, match="unknown miner 'hard'"):
        TripletLoss(miner="hard")
    with pytest.raises(ValueError, match="neg_margin"):
        ContrastiveLoss(pos_margin=0.5, neg_margin=0.5)
    with pytest.raises(ValueError, match="cutoff"):
        MarginLoss(miner=DistanceWeightedMiner(cutoff=1.5))
    f = _unit(np.random.default_rng(0), 4, 3).astype(np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
        MarginLoss(num_classes=2)(np.array([0, 0, 3, 3], np.int32), f)
    with pytest.raises(ValueError, match="batch sizes"):
        TripletLoss()(np.array([0, 0, 1], np.int32), f)


def _train_mirrored(strategy, images, labels):
    with strategy.scope():
        model = _metric_model(MultiSimilarityLoss())
        model.compile(optimizer=keras.optimizers.SGD(0.05))
    history = model.fit(tf.data.Dataset.from_tensor_slices((images, labels)), epochs=1, verbose=0, shuffle=False)
    return model, history.history["loss"][0]


def test_mirrored_two_replicas_equal_one_device(two_replicas):
    images, labels = _image_batch(classes=8, steps=2)
    single, single_loss = _train_mirrored(tf.distribute.get_strategy(), images, labels)
    mirrored, mirrored_loss = _train_mirrored(two_replicas, images, labels)
    # Same global batch, same data order: equal up to float32 reduction-order noise.
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-4)
    for a, b in zip(single.weights, mirrored.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    # The run must have moved the weights, or the comparison above proves nothing.
    untrained = _metric_model(MultiSimilarityLoss())
    assert not np.allclose(single.head.weights[0].numpy(), untrained.head.weights[0].numpy())
