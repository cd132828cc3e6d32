"""pddm_tf.methods: strict method options (`build_model`) and one full settings set (`method_options`)."""

import inspect

import keras
import numpy as np
import pytest
from absl import flags

from pddm_tf import small_convnet
from pddm_tf.cli import main as cli
from pddm_tf.methods import METHOD_OPTIONS, METHODS, build_model, method_options
from pddm_tf.models import PDDMModel
from pddm_tf.models.divide_and_conquer import DivideAndConquerModel
from pddm_tf.models.hdml import HDMLModel


def _net():
    return small_convnet(16, 1, width=4, depth=2)


def test_a_misspelt_option_raises_naming_it_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"'pddm_quadruplet' takes no option 'aplha'; its options are 'alpha', "
                                         r"'beta', 'dropout', 'embedding_weight', 'mining', 'mining_score', "
                                         r"'pddm_normalize_inputs'"):
        build_model("pddm_quadruplet", _net(), 8, aplha=1.0)
    with pytest.raises(ValueError, match=r"no method takes the option 'aplha'; 'margin' takes 'dropout'"):
        method_options("margin", alpha=1.0, aplha=1.0)
    # An option of other methods only is refused by build_model (it would be ignored), dropped by method_options.
    with pytest.raises(ValueError, match=r"'margin' takes no option 'alpha'; its options are 'dropout'"):
        build_model("margin", _net(), 8, alpha=1.0)
    assert method_options("margin", alpha=1.0, dropout=0.25, num_learners=2) == {"dropout": 0.25}
    with pytest.raises(ValueError, match="unknown method 'pddm'"):
        method_options("pddm")


def test_method_options_are_the_builders_keyword_parameters():
    for name, builder in METHODS.items():
        parameters = inspect.signature(builder).parameters
        assert list(parameters)[:2] == ["backbone", "embedding_dim"]
        assert set(METHOD_OPTIONS[name]) == set(list(parameters)[2:])  # no **kwargs that would swallow options
        assert "dropout" in METHOD_OPTIONS[name]


def test_every_method_builds_with_the_cli_settings_and_receives_them():
    try:
        flags.FLAGS(["pddm-tf", "--alpha=0.3", "--beta=0.7", "--embedding_weight=0.2", "--dropout=0.125",
                     "--num_learners=2", "--hdml_beta=500"])
        settings = cli._method_settings(num_classes=3)
    finally:
        flags.FLAGS.unparse_flags()
    assert set(settings) == set().union(*METHOD_OPTIONS.values())  # the CLI sets every option some method takes
    for name in METHODS:
        model = build_model(name, _net(), 8, **method_options(name, **settings))
        assert model.dropout == 0.125, name
        if isinstance(model, PDDMModel):
            loss = model.hinge_loss
            assert (loss.alpha, loss.beta, loss.embedding_weight) == (0.3, 0.7, 0.2), name
        if isinstance(model, DivideAndConquerModel):
            assert model.num_learners == 2, name
        if isinstance(model, HDMLModel):
            assert model.num_classes == 3 and model.beta == 500.0, name


def test_loss_options_reach_every_baseline_loss_and_are_strict():
    """Every settable hyperparameter of a baseline method's loss, moved off its default, reaches the loss."""
    from pddm_tf.cli import validation
    from pddm_tf.methods import loss_hyperparameters

    with_options = {name for name in METHODS if "loss_options" in METHOD_OPTIONS[name]}
    assert with_options == validation.LOSS_OPTION_METHODS
    for name in sorted(with_options):
        loss = build_model(name, _net(), 8).embedding_loss
        defaults = loss.get_config()
        changed = {key: defaults[key] * 0.5 + 0.25 for key in loss_hyperparameters(type(loss))
                   if isinstance(defaults.get(key), float)}
        if name == "contrastive":  # needs pos_margin < neg_margin
            changed = {"pos_margin": 0.1, "neg_margin": 0.8}
        assert changed, name
        got = build_model(name, _net(), 8, loss_options=changed).embedding_loss.get_config()
        for key, value in changed.items():
            assert got[key] == pytest.approx(value), (name, key)
    with pytest.raises(ValueError, match=r"TripletLoss takes no loss option 'margn'; "
                                         r"its options are 'distance', 'margin', 'reducer'$"):
        build_model("triplet_batchhard", _net(), 8, loss_options={"margn": 0.3})
    # A value of the wrong JSON type is refused by name, not passed on to fail inside the loss.
    with pytest.raises(ValueError, match=r"TripletLoss's option margin takes a value of type float, got 'big'"):
        build_model("triplet_batchhard", _net(), 8, loss_options={"margin": "big"})
    with pytest.raises(ValueError, match=r"MarginLoss's option learn_beta takes a value of type bool, got 1"):
        build_model("margin", _net(), 8, loss_options={"learn_beta": 1})
    with pytest.raises(ValueError, match=r"NPairLoss's option l2_reg takes a value of type float, got True"):
        build_model("npair", _net(), 8, loss_options={"l2_reg": True})
    assert build_model("npair", _net(), 8, loss_options={"l2_reg": 1}).embedding_loss.get_config()["l2_reg"] == 1.0
    # The mining defines the method: triplet_batchhard cannot be turned into semi-hard mining.
    with pytest.raises(ValueError, match="takes no loss option 'miner'"):
        build_model("triplet_batchhard", _net(), 8, loss_options={"miner": "semi_hard"})


def test_a_loss_option_changes_the_loss_as_the_numpy_reference():
    """triplet_batchhard with margin 0.7: mean over anchors of max(0, hardest D_ap - hardest D_an + 0.7)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 3).astype("int32")
    d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))
    same = labels[:, None] == labels[None]
    hardest_positive = np.where(same & ~np.eye(12, dtype=bool), d, -np.inf).max(1)
    hardest_negative = np.where(~same, d, np.inf).min(1)
    model = build_model("triplet_batchhard", _net(), 8, loss_options={"margin": 0.7})
    default_loss = build_model("triplet_batchhard", _net(), 8).embedding_loss
    for margin, loss in ((0.7, model.embedding_loss), (0.2, default_loss)):
        want = np.maximum(hardest_positive - hardest_negative + margin, 0).mean()
        np.testing.assert_allclose(loss(tf.constant(labels), tf.constant(x)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_two_margin_models_draw_from_their_own_samplers():
    """Each model built by name gets its own seeded sampler: training one leaves another's draws alone
    (one shared miner instance once made the second model's first draws depend on the first's steps)."""
    rng = np.random.default_rng(0)
    images, labels = rng.random((16, 16, 16, 1)).astype(np.float32), np.repeat(np.arange(4), 4).astype(np.int32)

    def model():
        keras.utils.set_random_seed(0)
        built = build_model("margin", small_convnet(16, 1, width=8), 8)
        built.build((None, 16, 16, 1))
        built.compile(optimizer=keras.optimizers.SGD(0.1))
        return built

    first, second = model(), model()
    assert first.embedding_loss.miner is not second.embedding_loss.miner
    second.set_weights(first.get_weights())
    losses_first = [first.train_on_batch(images, labels) for _ in range(3)]
    losses_second = [second.train_on_batch(images, labels) for _ in range(3)]
    np.testing.assert_allclose(losses_second, losses_first, rtol=1e-5)
