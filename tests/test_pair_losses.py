"""The pair losses of issue 32 (circle, SupCon, NT-Xent, tuplet margin, FastAP) and the three miners,
each against an independent numpy reference (tests/pair_loss_reference.py): value, gradient (central
differences of the reference in float64), serialisation, and the distances each refuses."""

import keras
import numpy as np
import pair_loss_reference as ref
import pytest
import tensorflow as tf

from pddm_tf import backbones, losses, miners
from pddm_tf.models import MetricLossModel

LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4])  # class 4 has no positive


def _batch(seed=0, d=5):
    return np.random.default_rng(seed).normal(size=(len(LABELS), d))


# name -> (loss factory, numpy reference of the same settings, gradient through the stopped weights?)
CASES = {
    "circle": (lambda: losses.CircleLoss(m=0.25, gamma=16.0), lambda x, y: ref.circle(x, y, m=0.25, gamma=16.0)),
    "supcon": (lambda: losses.SupConLoss(temperature=0.5), lambda x, y: ref.supcon(x, y, temperature=0.5)),
    "ntxent": (lambda: losses.NTXentLoss(temperature=0.3), lambda x, y: ref.ntxent(x, y, temperature=0.3)),
    "tuplet_margin": (lambda: losses.TupletMarginLoss(margin=5.73, scale=8.0),
                      lambda x, y: ref.tuplet_margin(x, y, margin_degrees=5.73, scale=8.0)),
    "fastap": (lambda: losses.FastAPLoss(num_bins=10), lambda x, y: ref.fastap(x, y, num_bins=10)),
}
DEFAULTS = {"circle": (losses.CircleLoss, ref.circle), "supcon": (losses.SupConLoss, ref.supcon),
            "ntxent": (losses.NTXentLoss, ref.ntxent), "tuplet_margin": (losses.TupletMarginLoss, ref.tuplet_margin),
            "fastap": (losses.FastAPLoss, ref.fastap)}


def _value_and_gradient(loss, x):
    embeddings = tf.Variable(x.astype(np.float32))
    with tf.GradientTape() as tape:
        value = loss(LABELS, embeddings)
    return float(value), tape.gradient(value, embeddings).numpy()


def _numeric_gradient(function, x, step=1e-5):
    gradient = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        gradient[index] = (function(up) - function(down)) / (2 * step)
    return gradient


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradient_match_the_numpy_reference(name):
    make, reference = CASES[name]
    x = _batch()
    value, gradient = _value_and_gradient(make(), x)
    np.testing.assert_allclose(value, reference(x, LABELS), rtol=2e-4, atol=1e-5)
    if name == "circle":
        # The circle loss's weights alpha are constants of its gradient (stopped, as in the paper): the
        # reference is differentiated with them frozen at x.
        s0 = ref.cosine(x)
        numeric = _numeric_gradient(lambda z: ref.circle(z, LABELS, m=0.25, gamma=16.0, weights=s0), x)
    else:
        numeric = _numeric_gradient(lambda z: reference(z, LABELS), x)
    np.testing.assert_allclose(gradient, numeric, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_default_settings_match_the_reference_defaults(name):
    # pytorch-metric-learning's defaults (docs/loss_conventions.md): the constructors' and the references'.
    loss_class, reference = DEFAULTS[name]
    x = _batch(seed=1)
    value, _ = _value_and_gradient(loss_class(), x)
    np.testing.assert_allclose(value, reference(x, LABELS), rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_through_keras_saving(name):
    loss = CASES[name][0]()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    x = _batch(seed=2)
    assert _value_and_gradient(clone, x)[0] == pytest.approx(_value_and_gradient(loss, x)[0], rel=1e-6)


@pytest.mark.parametrize("make, distance", [
    (losses.CircleLoss, "euclidean"), (losses.SupConLoss, "squared_euclidean"), (losses.NTXentLoss, "cosine"),
    (losses.TupletMarginLoss, "dot_product"), (losses.FastAPLoss, "cosine_similarity"),
])
def test_a_distance_that_makes_no_sense_is_refused(make, distance):
    with pytest.raises(ValueError, match=type(make()).__name__):
        make(distance=distance)


@pytest.mark.parametrize("make, argument", [
    (losses.CircleLoss, "gamma"), (losses.SupConLoss, "temperature"), (losses.NTXentLoss, "temperature"),
    (losses.TupletMarginLoss, "scale"),
])
def test_nan_or_inf_hyperparameters_are_refused(make, argument):
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=argument):
            make(**{argument: bad})


def test_fastap_ranks_better_embeddings_lower():
    # FastAP is 1 - an AP estimate: class-separated embeddings must score near 0, shuffled ones higher.
    centres = np.eye(5)[LABELS % 5] * 3.0
    separated = centres + 0.01 * _batch(seed=3)
    loss = losses.FastAPLoss()
    assert float(loss(LABELS, separated.astype(np.float32))) < 0.15
    assert float(loss(LABELS, _batch(seed=3).astype(np.float32))) > 0.4


# -------------------------------------------------------------------------------------------- miners


def _pairs(tuples):
    a1, p, a2, n = (t.numpy() for t in tuples.pairs())
    return set(zip(a1.tolist(), p.tolist())), set(zip(a2.tolist(), n.tolist()))


def test_multi_similarity_miner_keeps_the_papers_pairs():
    x = _batch(seed=4)
    tuples = miners.MultiSimilarityMiner(epsilon=0.1)(LABELS, x.astype(np.float32))
    assert tuples.is_pairs
    assert _pairs(tuples) == ref.multi_similarity_pairs(x, LABELS, epsilon=0.1)


def test_pair_margin_miner_keeps_the_violating_pairs():
    x = _batch(seed=5) * 0.4
    tuples = miners.PairMarginMiner(pos_margin=0.6, neg_margin=1.1)(LABELS, x.astype(np.float32))
    expected = ref.pair_margin_pairs(x, LABELS, pos_margin=0.6, neg_margin=1.1)
    assert expected[0] and expected[1]  # the margins leave something on each side
    assert _pairs(tuples) == expected


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
def test_triplet_margin_miner_keeps_triplets_of_its_type(kind):
    x = _batch(seed=6)
    tuples = miners.TripletMarginMiner(margin=0.5, type_of_triplets=kind)(LABELS, x.astype(np.float32))
    rows = {tuple(row) for row in tuples.rows().numpy().tolist()}
    expected = ref.triplet_margin_triplets(x, LABELS, margin=0.5, kind=kind)
    assert expected and rows == expected


def test_a_miner_feeds_any_pair_loss():
    # The contrastive loss of the pair-margin miner's pairs = the numpy contrastive loss of those pairs.
    x = (_batch(seed=7) * 0.4).astype(np.float32)
    miner = miners.PairMarginMiner(pos_margin=0.6, neg_margin=1.1)
    loss = losses.ContrastiveLoss(pos_margin=0.3, neg_margin=1.0, miner=miner)
    positives, negatives = ref.pair_margin_pairs(x, LABELS, pos_margin=0.6, neg_margin=1.1)
    d = np.sqrt(np.sum((x[:, None].astype(np.float64) - x[None]) ** 2, axis=-1))
    pull = [max(d[a, p] - 0.3, 0) ** 2 for a, p in positives]
    push = [max(1.0 - d[a, n], 0) ** 2 for a, n in negatives]

    def avg_non_zero(values):
        nonzero = [v for v in values if v > 0]
        return sum(nonzero) / max(len(nonzero), 1)

    np.testing.assert_allclose(float(loss(LABELS, x)), avg_non_zero(pull) + avg_non_zero(push), rtol=1e-4)


def test_miners_round_trip_their_config():
    for miner in (miners.MultiSimilarityMiner(epsilon=0.2), miners.PairMarginMiner(0.1, 0.9, distance="cosine"),
                  miners.TripletMarginMiner(0.3, "semihard")):
        clone = miners.get_miner(miners.serialize_miner(miner))
        assert type(clone) is type(miner) and clone.get_config() == miner.get_config()


def test_triplet_margin_miner_refuses_an_unknown_type():
    with pytest.raises(ValueError, match="type_of_triplets"):
        miners.TripletMarginMiner(type_of_triplets="medium")


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_replicas_train_as_one_device(name, two_replicas):
    # MetricLossModel gives the loss the global batch: two replicas of 4 images each take the step one
    # device takes on the 8.
    rng = np.random.default_rng(8)
    batches = tf.data.Dataset.from_tensor_slices((rng.uniform(size=(2, 8, 16, 16, 1)).astype(np.float32),
                                                  np.tile(np.repeat(np.arange(4), 2), (2, 1))))

    def trained(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = MetricLossModel(backbones.small_convnet(16, 1, width=8), CASES[name][0](), embedding_dim=8)
            model.build((None, 16, 16, 1))
            model.compile(optimizer=keras.optimizers.SGD(0.1))
        model.fit(batches, epochs=1, verbose=0, shuffle=False)
        return model

    single, mirrored = trained(tf.distribute.get_strategy()), trained(two_replicas)
    for a, b in zip(mirrored.weights, single.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    assert not np.allclose(single.head.weights[0].numpy(), _fresh_head_kernel())


def _fresh_head_kernel():
    keras.utils.set_random_seed(0)
    model = MetricLossModel(backbones.small_convnet(16, 1, width=8), losses.CircleLoss(), embedding_dim=8)
    model.build((None, 16, 16, 1))
    return model.head.weights[0].numpy()
