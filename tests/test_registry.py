"""Registries: datasets, search backends and methods that a user adds in one place are found everywhere."""

import numpy as np
import pytest

from pddm_tf import data, evaluation, methods
from pddm_tf.backbones import small_convnet
from pddm_tf.evaluation.index import Index
from pddm_tf.losses import TripletLoss
from pddm_tf.models import MetricLossModel
from pddm_tf.options import Bound, Setting
from pddm_tf.registry import Registry
from pddm_tf.training import TrainConfig, load_split


def test_registry_registers_finds_and_refuses_clashes():
    colours = Registry("colour")
    assert colours.register("red", 1) == 1

    @colours.register("blue")
    def blue():
        return 2

    assert dict(colours) == {"red": 1, "blue": blue} and colours.get("blue")() == 2
    colours.register("red", 1)  # the same entry again: allowed (a module imported twice)
    with pytest.raises(ValueError, match="a colour named 'red' is already registered"):
        colours.register("red", 3)
    with pytest.raises(ValueError, match="unknown colour 'green'; known colours: 'red', 'blue'"):
        colours.get("green")
    assert colours.unregister("red") == 1 and list(colours) == ["blue"]


@pytest.fixture
def registered():
    """Registers entries for one test and removes them after, so other tests see the built-in registries."""
    added = []

    def register(registry, name, entry):
        registry.register(name, entry)
        added.append((registry, name))
        return entry

    yield register
    for registry, name in added:
        registry.unregister(name)


def test_a_registered_dataset_loads_by_name_everywhere(registered):
    omniglot = data.load_omniglot(test_fraction=0.5, seed=1)
    calls = []

    def load_letters(test_fraction, seed, **kwargs):
        calls.append((test_fraction, seed, kwargs))
        return omniglot

    registered(data.DATASETS, "test_letters", load_letters)
    assert data.load_dataset("test_letters", test_fraction=0.3, seed=4) is omniglot
    split, channels = load_split(TrainConfig.from_flags(dataset="test_letters", test_fraction=0.25, seed=2))
    assert split is omniglot and channels == 1
    assert calls[0] == (0.3, 4, {}) and calls[1][:2] == (0.25, 2)  # the config's split settings reach the loader
    known = "known datasets: 'omniglot', .*'test_letters'"
    with pytest.raises(ValueError, match=f"unknown dataset 'test_nothing'; {known}"):
        data.load_dataset("test_nothing")


def test_a_registered_search_backend_serves_nearest_neighbors_and_index(registered):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 6)).astype(np.float32)
    queries = rng.normal(size=(7, 6)).astype(np.float32)
    used = []

    def brute_force(q, g, k, exclude_self, chunk_size, gallery_chunk_size):
        used.append(k)
        d = ((q[:, None].astype(np.float64) - g[None]) ** 2).sum(-1)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        return order.astype(np.int64), np.take_along_axis(d, order, 1).astype(np.float32)

    registered(evaluation.SEARCH_BACKENDS, "test_brute_force", brute_force)
    indices, distances = evaluation.nearest_neighbors(queries, gallery, k=3, backend="test_brute_force")
    expected, _ = evaluation.nearest_neighbors(queries, gallery, k=3, backend="numpy")
    np.testing.assert_array_equal(indices, expected)
    index = Index(backend="test_brute_force")
    index.add(gallery)
    assert index.search(queries, k=2)[0].tolist() == expected[:, :2].tolist() and used == [3, 2]
    with pytest.raises(ValueError, match="backend must be one of .*'test_brute_force', 'auto'"):
        evaluation.nearest_neighbors(queries, gallery, k=3, backend="bogus")


def test_a_registered_method_builds_with_its_own_options_only():
    def build(backbone, embedding_dim, settings):
        return MetricLossModel(backbone, TripletLoss(margin=settings["margin"]), embedding_dim=embedding_dim,
                               dropout=settings["dropout"])

    spec = methods.MethodSpec(name="test_wide_triplet", summary="a test", build=build,
                              options={"margin": Setting(float, 0.1, "the margin", Bound(0))})
    methods.register_method(spec)
    try:
        assert methods.METHOD_OPTIONS["test_wide_triplet"] == ("margin", "dropout", "training_classes")
        model = methods.build_model("test_wide_triplet", small_convnet(16, 1, width=4, depth=2), 8, margin=0.4)
        assert model.embedding_loss.margin == 0.4
        with pytest.raises(ValueError, match="takes no option 'alpha'"):
            methods.build_model("test_wide_triplet", small_convnet(16, 1, width=4, depth=2), 8, alpha=1.0)
        with pytest.raises(ValueError, match="a method named 'test_wide_triplet' is already registered"):
            methods.register_method(methods.MethodSpec(name="test_wide_triplet", summary="", build=build))
    finally:
        methods.METHOD_SPECS.unregister("test_wide_triplet")
