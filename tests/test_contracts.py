"""Contracts every loss, miner and layer of pddm_tf keeps, checked over all of them.

The losses and layers come from Keras' serialization registry (every `pddm_tf>` class registered
with `keras.saving.register_keras_serializable`), the miners from the public functions of
`pddm_tf.miners.mining`: a new one is checked without being listed here, and a test fails if it needs a
case this file does not know how to build.

Losses: serialization round-trip, finite gradients (also at coincident embeddings), 0 on a batch
without a valid tuple, unknown batch size under `tf.function`, bfloat16 inputs.
Miners: no tuple from a batch without one, unknown batch size under `tf.function`, the same
tuples from bfloat16 distances. (Miners return indices: nothing to serialize or differentiate.)
Layers: serialization round-trip, finite gradients, unknown batch size, bfloat16 inputs.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import pddm_tf
from pddm_tf import miners
from pddm_tf.backbones import PREPROCESSING_MODES
from pddm_tf.distances import pairwise_distances
from pddm_tf.losses.margin import MARGIN_SAMPLERS
from pddm_tf.losses.triplet import TRIPLET_MINING
from pddm_tf.miners import mining

pddm_tf._import_all()  # registers every Keras class of the library

_DIM = 4


def _registered(base: type) -> dict[str, type]:
    return {name.split(">", 1)[1]: cls for name, cls in keras.saving.get_custom_objects().items()
            if name.startswith("pddm_tf>") and issubclass(cls, base) and not issubclass(cls, keras.Model)}


def _embeddings(m: int = 8, seed: int = 0) -> np.ndarray:
    f = np.random.default_rng(seed).normal(size=(m, _DIM)).astype("float32")
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    f[1] = f[0]  # a coincident positive pair: distances of 0, where a square root's gradient is infinite
    return f


_LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
# Batches without a valid tuple: one sample; no positive pair; no negative.
_NO_TUPLE = {"single": np.array([0], np.int32), "distinct": np.array([0, 1, 2, 3], np.int32),
             "one_class": np.array([2, 2, 2, 2], np.int32)}

# -- losses -------------------------------------------------------------------------------------

_LOSSES = _registered(keras.losses.Loss)
# The options that change a loss's code path; any other registered loss runs with its defaults.
# Seeded samplers, so that two instances of one config draw the same negatives.
_LOSS_OPTIONS = {
    "TripletLoss": [{"miner": m} for m in TRIPLET_MINING] + [{"miner": "batch_hard", "distance": "cosine"}],
    "MarginLoss": [{"miner": {"name": s, "config": {"seed": 0} if s == "distance_weighted" else {}}}
                   for s in MARGIN_SAMPLERS] + [{"num_classes": 4, "miner": {"name": "distance_weighted",
                                                                              "config": {"seed": 0}}}],
    "DoubleHeaderHingeLoss": [{"miner": {"name": "quadruplet", "config": {"mode": m}}, "heads": h}
                              for m in mining.MINING_MODES for h in (1, 2)],
    # A fresh memory per instance: the first call compares the batch with itself.
    # The wrapped loss as its name (a config, not an object: test ids must read the same in every process).
    "CrossBatchMemory": [{"loss": "multi_similarity", "embedding_size": _DIM, "memory_size": 16}],
}
# Proxy losses own weights whose shape their constructor needs (issue 32).
_LOSS_OPTIONS.update({name: [{"num_classes": 4, "embedding_size": _DIM}] for name, cls in _LOSSES.items()
                      if issubclass(cls, pddm_tf.losses.ProxyLoss)})
_LOSS_CASES = [pytest.param(name, options, id=f"{name}-{options}".replace(" ", ""))
               for name in sorted(_LOSSES) for options in _LOSS_OPTIONS.get(name, [{}])]
# A contrastive loss scores single pairs, not tuples: a positive pair costs something without any
# negative, a close negative pair without any positive (ContrastiveLoss), so only a one-sample batch has no term.
# SupCon likewise has a term for every anchor with a positive (its softmax runs over the positives too).
_SINGLE_PAIR_LOSSES = {"ContrastiveLoss", "SupConLoss"}


def _loss(name: str, options: dict) -> keras.losses.Loss:
    _same_initial_weights(_LOSSES[name])
    return _LOSSES[name](**options)


def _same_initial_weights(cls: type) -> None:
    """Seeds Keras before a proxy loss is made: its proxies are drawn at construction, and instances
    compared with each other must draw the same ones."""
    if issubclass(cls, pddm_tf.losses.ProxyLoss):
        keras.utils.set_random_seed(0)


def _perturbed(cls: type, options: dict) -> dict:
    """`options` plus every other float argument of `cls` moved off its default (x 1.25, or 0.1 for 0),
    so that a serialization round-trip that drops one changes the result."""
    parameters = inspect.signature(cls.__init__).parameters
    moved = {name: (1.25 * p.default if p.default else 0.1) for name, p in parameters.items()
             if isinstance(p.default, float) and name not in options}
    return {**moved, **options}


def _check_config_holds_every_argument(obj) -> None:
    parameters = inspect.signature(type(obj).__init__).parameters
    missing = [name for name, p in parameters.items()
               if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and name not in obj.get_config()]
    assert not missing, f"{type(obj).__name__}.get_config() lacks {missing}"


def test_the_registry_holds_the_losses():
    assert {"ContrastiveLoss", "DoubleHeaderHingeLoss", "LiftedStructuredLoss", "MarginLoss", "MultiSimilarityLoss",
            "NPairLoss", "TripletLoss"} <= set(_LOSSES)
    assert set(_LOSS_OPTIONS) <= set(_LOSSES)


@pytest.mark.parametrize("name, options", _LOSS_CASES)
def test_loss_serialization_round_trip(name, options):
    loss = _loss(name, _perturbed(_LOSSES[name], options))
    _check_config_holds_every_argument(loss)
    config = loss.get_config()
    _same_initial_weights(type(loss))
    copies = [keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))]
    _same_initial_weights(type(loss))
    copies.append(type(loss).from_config(config))
    value = float(loss(_LABELS, _embeddings()))
    assert value > 0
    for copy in copies:
        assert type(copy) is type(loss) and copy.get_config() == config
        assert float(copy(_LABELS, _embeddings())) == pytest.approx(value, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name, options", _LOSS_CASES)
def test_loss_gradient_is_finite(name, options):
    embeddings = tf.Variable(_embeddings())
    loss = _loss(name, options)
    with tf.GradientTape() as tape:
        value = loss(_LABELS, embeddings)
    gradient = tf.convert_to_tensor(tape.gradient(value, embeddings)).numpy()
    assert np.all(np.isfinite(gradient))
    assert np.abs(gradient).max() > 0  # a positive loss moves the embeddings


@pytest.mark.parametrize("batch", sorted(_NO_TUPLE))
@pytest.mark.parametrize("name, options", _LOSS_CASES)
def test_loss_is_zero_without_a_valid_tuple(name, options, batch):
    labels = _NO_TUPLE[batch]
    if name in _SINGLE_PAIR_LOSSES and batch != "single":
        pytest.skip("a single-pair loss has valid pairs in any batch of two or more")
    if issubclass(_LOSSES[name], pddm_tf.losses.ProxyLoss):
        pytest.skip("a proxy loss scores every labelled sample against the class proxies: no tuple is needed")
    embeddings = tf.Variable(_embeddings()[: len(labels)])
    with tf.GradientTape() as tape:
        value = _loss(name, options)(labels, embeddings)
    gradient = tape.gradient(value, embeddings)
    assert float(value) == 0.0
    assert gradient is None or np.all(tf.convert_to_tensor(gradient).numpy() == 0.0)


@pytest.mark.parametrize("name, options", _LOSS_CASES)
def test_loss_traces_with_an_unknown_batch_size(name, options):
    loss = _loss(name, options)
    traced = tf.function(loss.__call__, input_signature=[tf.TensorSpec([None], tf.int32),
                                                         tf.TensorSpec([None, _DIM], tf.float32)])
    reference = _loss(name, options)  # called in the same order: a seeded sampler's draws advance per call
    for m in (8, 6):  # one trace serves both sizes
        expected = float(reference(_LABELS[:m], _embeddings()[:m]))
        assert float(traced(_LABELS[:m], _embeddings()[:m])) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert traced.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("name, options", _LOSS_CASES)
def test_loss_of_bfloat16_embeddings(name, options):
    expected = float(_loss(name, options)(_LABELS, _embeddings()))
    value = _loss(name, options)(_LABELS, tf.constant(_embeddings(), tf.bfloat16))
    assert np.isfinite(float(value))
    # bfloat16 keeps 8 significant bits: inputs move by up to 0.4%.
    assert float(value) == pytest.approx(expected, rel=2e-2, abs=5e-3)


# -- miners -------------------------------------------------------------------------------------


def _tuples(anchor_pairs_mask: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    pairs = tf.cast(tf.where(anchor_pairs_mask), tf.int32)
    return tf.concat([pairs, tf.boolean_mask(values, anchor_pairs_mask)[:, None]], 1)


def _semi_hard(labels, distances):
    negatives, has_negative = mining.semi_hard_negatives(labels, distances)
    positive, _ = mining.pair_masks(labels)
    return _tuples(positive & has_negative[:, None], negatives)


def _batch_hard(labels, distances):
    positives, negatives, valid = mining.batch_hard_triplets(labels, distances)
    anchors = tf.cast(tf.where(valid)[:, 0], tf.int32)
    return tf.stack([anchors, tf.boolean_mask(positives, valid), tf.boolean_mask(negatives, valid)], axis=1)


# Every miner as (labels, distances) -> [t, width] int32 tuples of the batch, t = 0 when there is none.
_MINERS = {
    "mine_quadruplets": [lambda labels, d, mode=mode: mining.mine_quadruplets(labels, -d, mode).indices
                         for mode in mining.MINING_MODES],
    "semi_hard_negatives": [_semi_hard],
    "batch_hard_triplets": [_batch_hard],
    # (anchor, positive) pairs of the N-pair loss: a pair needs no negative.
    "npair_pairs": [lambda labels, d: mining.npair_pairs(labels)],
    "distance_weighted_negatives": [lambda labels, d: mining.distance_weighted_negatives(
        labels, d, _DIM, seed=tf.constant([0, 0]))],
    "closest_negatives_beyond_cutoff": [mining.closest_negatives_beyond_cutoff],
}
# Public functions of pddm_tf.miners.mining that are not miners (validation, masks, scores, a statistic).
_NOT_MINERS = {"check_labels", "pair_masks", "euclidean_scores", "score_gap", "pairwise_squared_distances"}
_MINER_CASES = [pytest.param(name, k, id=f"{name}-{k}") for name in sorted(_MINERS) for k in range(len(_MINERS[name]))]


def _distances(m: int = 8) -> tf.Tensor:
    return pairwise_distances(tf.constant(_embeddings(m, seed=1)))


def test_every_public_function_of_mining_is_a_miner_here_or_a_helper():
    public = {name for name, value in inspect.getmembers(mining, inspect.isfunction)
              if not name.startswith("_") and value.__module__ == mining.__name__}
    assert public == set(_MINERS) | (_NOT_MINERS & public), "classify the new function of pddm_tf.miners.mining above"


@pytest.mark.parametrize("batch", sorted(_NO_TUPLE))
@pytest.mark.parametrize("name, k", _MINER_CASES)
def test_miner_finds_nothing_without_a_valid_tuple(name, k, batch):
    labels = _NO_TUPLE[batch]
    found = _MINERS[name][k](tf.constant(labels), _distances()[: len(labels), : len(labels)])
    if name == "npair_pairs" and batch == "one_class":
        assert found.numpy().tolist() == [[0, 1]]  # its first two samples: a pair needs no negative
    else:
        assert found.shape[0] == 0


@pytest.mark.parametrize("name, k", _MINER_CASES)
def test_miner_traces_with_an_unknown_batch_size(name, k):
    miner = _MINERS[name][k]
    traced = tf.function(miner, input_signature=[tf.TensorSpec([None], tf.int32),
                                                 tf.TensorSpec([None, None], tf.float32)])
    for m in (8, 6):
        labels, distances = tf.constant(_LABELS[:m]), _distances()[:m, :m]
        expected = miner(labels, distances).numpy()
        assert expected.shape[0] > 0
        np.testing.assert_array_equal(traced(labels, distances).numpy(), expected)
    assert traced.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("name, k", _MINER_CASES)
def test_miner_of_bfloat16_distances(name, k):
    # Distances that bfloat16 keeps apart (the closest two of a row differ by > 2%): the same tuples.
    distances = _distances()
    rounded = tf.cast(tf.cast(distances, tf.bfloat16), tf.float32)
    expected = _MINERS[name][k](tf.constant(_LABELS), rounded).numpy()
    np.testing.assert_array_equal(_MINERS[name][k](tf.constant(_LABELS), tf.cast(distances, tf.bfloat16)).numpy(),
                                  expected)


# -- miner objects (pddm_tf.miners) -------------------------------------------------------------
# Every registered Miner, with its defaults and with every float argument moved (a round-trip that
# drops one changes the tuples); seeded, so that two instances draw the same negatives.
_MINER_OBJECT_OPTIONS = {"distance_weighted": {"seed": 0}}
# Miners whose tuples pair an anchor with candidates of any label (the N-pair softmax).
_CANDIDATE_MINERS = {"npair"}
# Pair-form miners that keep positive pairs without any negative (a contrastive loss's pairs).
_POSITIVE_PAIR_MINERS = {"pair_margin"}
_MINER_OBJECT_CASES = [pytest.param(name, id=name) for name in sorted(miners.MINERS)]


def _miner(name: str, perturbed: bool = False) -> miners.Miner:
    cls = miners.MINERS[name]
    options = dict(_MINER_OBJECT_OPTIONS.get(name, {}))
    return cls(**(_perturbed(cls, options) if perturbed else options))


def _rows(tuples: miners.Tuples) -> np.ndarray:
    """The triplets of the tuples (a pair-form miner's as `to_triplets`), [t, 3]."""
    return tuples.to_triplets().rows().numpy()


def test_the_registry_holds_the_miners():
    assert {"semi_hard", "batch_hard", "quadruplet", "npair", "distance_weighted",
            "closest_beyond_cutoff"} <= set(miners.MINERS)


@pytest.mark.parametrize("name", _MINER_OBJECT_CASES)
def test_miner_object_round_trip_and_valid_tuples(name):
    miner = _miner(name, perturbed=True)
    _check_config_holds_every_argument(miner)
    copy = miners.get_miner(miners.serialize_miner(miner))
    assert type(copy) is type(miner) and copy == miner and copy is not miner
    labels, embeddings = tf.constant(_LABELS), tf.constant(_embeddings(seed=1))
    rows = _rows(miner(labels, embeddings))
    assert len(rows) > 0
    np.testing.assert_array_equal(_rows(copy(labels, embeddings)), rows)
    y = _LABELS
    assert np.all(y[rows[:, 0]] == y[rows[:, 1]]) and np.all(rows[:, 0] != rows[:, 1])
    if name not in _CANDIDATE_MINERS:
        assert np.all(y[rows[:, 0]] != y[rows[:, 2]])


@pytest.mark.parametrize("batch", sorted(_NO_TUPLE))
@pytest.mark.parametrize("name", _MINER_OBJECT_CASES)
def test_miner_object_finds_nothing_without_a_valid_tuple(name, batch):
    labels = _NO_TUPLE[batch]
    tuples = _miner(name)(tf.constant(labels), tf.constant(_embeddings(seed=1)[: len(labels)]))
    if name in _CANDIDATE_MINERS and batch == "one_class":
        assert _rows(tuples).tolist() == [[0, 1, 1]]  # a pair needs no negative
    elif name in _POSITIVE_PAIR_MINERS and batch == "one_class":
        assert len(_rows(tuples)) == 0 and int(tf.size(tuples.negatives)) == 0  # positive pairs only
    else:
        assert int(tuples.count) == 0 and int(tuples.groups) == 0


@pytest.mark.parametrize("name", _MINER_OBJECT_CASES)
def test_miner_object_traces_with_an_unknown_batch_size(name):
    traced_miner, eager_miner = _miner(name), _miner(name)
    traced = tf.function(lambda labels, embeddings: tuple(traced_miner(labels, embeddings)),
                         input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, _DIM], tf.float32)])
    for m in (8, 6):
        labels, embeddings = tf.constant(_LABELS[:m]), tf.constant(_embeddings(seed=1)[:m])
        expected = eager_miner(labels, embeddings)
        got = miners.Tuples(*traced(labels, embeddings))
        np.testing.assert_array_equal(_rows(got), _rows(expected))
        assert int(got.groups) == int(expected.groups)
    assert traced.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("name", _MINER_OBJECT_CASES)
def test_miner_object_of_bfloat16_distances(name):
    distances = _distances()
    rounded = tf.cast(tf.cast(distances, tf.bfloat16), tf.float32)
    embeddings = tf.constant(_embeddings(seed=1))
    expected = _rows(_miner(name)(tf.constant(_LABELS), embeddings, rounded))
    got = _rows(_miner(name)(tf.constant(_LABELS), embeddings, tf.cast(distances, tf.bfloat16)))
    np.testing.assert_array_equal(got, expected)


# -- layers -------------------------------------------------------------------------------------

_LAYERS = _registered(keras.layers.Layer)
_RNG = np.random.default_rng(2)
_FEATURES = _embeddings(6, seed=3)
_FEATURES[2] = 0.0  # an all-zero feature: every norm is floored
_IMAGES = _RNG.uniform(size=(2, 3, 3, 3)).astype("float32")
# (constructor options, input of batch 2 or more) per registered layer.
_LAYER_CASES_BY_NAME = {
    "PDDM": [({"units": 4, "combined_units": 4}, _FEATURES),
             ({"units": 4, "combined_units": 4}, (_FEATURES, _FEATURES[::-1].copy()))],
    "L2Normalize": [({}, _FEATURES)],
    "EmbeddingHead": [({"embedding_dim": 4}, _FEATURES)],
    "SlicedEmbeddingHead": [({"embedding_dim": 4, "num_slices": 2}, _FEATURES)],
    "GeMPooling": [({}, _IMAGES)],
    # Grey and RGB inputs, alternating over the modes.
    "BackbonePreprocessing": [({"mode": mode}, _IMAGES[..., :1].copy() if k % 2 else _IMAGES)
                              for k, mode in enumerate(PREPROCESSING_MODES)],
}
_LAYER_CASES = [pytest.param(name, k, id=f"{name}-{k}") for name in sorted(_LAYER_CASES_BY_NAME)
                for k in range(len(_LAYER_CASES_BY_NAME[name]))]


def _layer_case(name: str, k: int, perturbed: bool = False):
    options, inputs = _LAYER_CASES_BY_NAME[name][k]
    return _LAYERS[name](**(_perturbed(_LAYERS[name], options) if perturbed else options)), inputs


def _map(fn, inputs):
    return tuple(fn(x) for x in inputs) if isinstance(inputs, tuple) else fn(inputs)


def test_every_registered_layer_has_a_case():
    assert set(_LAYER_CASES_BY_NAME) == set(_LAYERS)


@pytest.mark.parametrize("name, k", _LAYER_CASES)
def test_layer_serialization_round_trip(name, k):
    layer, inputs = _layer_case(name, k, perturbed=True)
    _check_config_holds_every_argument(layer)
    expected = layer(inputs).numpy()
    for copy in (keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)),
                 type(layer).from_config(layer.get_config())):
        assert type(copy) is type(layer) and copy.get_config() == layer.get_config()
        copy(inputs)  # builds its weights
        copy.set_weights(layer.get_weights())
        np.testing.assert_allclose(copy(inputs).numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, k", _LAYER_CASES)
def test_layer_gradient_is_finite(name, k):
    layer, inputs = _layer_case(name, k)
    variables = _map(tf.Variable, inputs)
    with tf.GradientTape() as tape:
        out = layer(variables)
        value = tf.reduce_sum(out * tf.random.stateless_normal(tf.shape(out), [0, 1]))
    watched = [*(variables if isinstance(variables, tuple) else [variables]), *layer.trainable_variables]
    gradients = tape.gradient(value, watched)
    assert all(g is not None and np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in gradients)
    assert any(np.abs(tf.convert_to_tensor(g).numpy()).max() > 0 for g in gradients)


@pytest.mark.parametrize("name, k", _LAYER_CASES)
def test_layer_traces_with_an_unknown_batch_size(name, k):
    layer, inputs = _layer_case(name, k)
    expected = layer(inputs).numpy()
    signature = _map(lambda x: tf.TensorSpec([None, *x.shape[1:]], tf.float32), inputs)
    traced = tf.function(lambda x: layer(x), input_signature=[signature])
    np.testing.assert_allclose(traced(inputs).numpy(), expected, rtol=1e-5, atol=1e-5)
    smaller = _map(lambda x: x[:2], inputs)
    np.testing.assert_allclose(traced(smaller).numpy(), layer(smaller).numpy(), rtol=1e-5, atol=1e-5)
    assert traced.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("name, k", _LAYER_CASES)
def test_layer_of_bfloat16_inputs(name, k):
    layer, inputs = _layer_case(name, k)
    expected = layer(inputs).numpy()
    out = tf.cast(layer(_map(lambda x: tf.constant(x, tf.bfloat16), inputs)), tf.float32).numpy()
    assert np.all(np.isfinite(out))
    # bfloat16 keeps 8 significant bits: inputs move by up to 0.4%.
    np.testing.assert_allclose(out, expected, rtol=2e-2, atol=2e-2 * max(np.abs(expected).max(), 1.0))
