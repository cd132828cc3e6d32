"""pddm_tf.methods: strict method options (`build_model`) and one full settings set (`method_options`)."""

import inspect

import pytest
from absl import flags

from pddm_tf import cli, small_convnet
from pddm_tf.divide_and_conquer import DivideAndConquerModel
from pddm_tf.hdml import HDMLModel
from pddm_tf.methods import METHOD_OPTIONS, METHODS, build_model, method_options
from pddm_tf.models import PDDMModel


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
