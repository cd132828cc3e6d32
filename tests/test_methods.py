"""pddm_tf.methods: one `MethodSpec` per method, typed options, flags a method uses, and the one table."""

import pathlib
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from pddm_tf import MetricLossModel, TripletLoss, small_convnet
from pddm_tf.methods import METHOD_OPTIONS, METHODS, build_model, method_options
from pddm_tf.methods.catalog import METHOD_NAMES, METHOD_SPECS
from pddm_tf.methods.spec import GENERAL_FLAGS, MethodConfig, MethodSpec, check_method_config, register_method
from pddm_tf.models import PDDMModel
from pddm_tf.models.divide_and_conquer import DivideAndConquerModel
from pddm_tf.models.hdml import HDMLModel
from pddm_tf.options import Bound, ConfigError, Setting
from pddm_tf.training import TrainConfig
from pddm_tf.training import run as training_run

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pddm_tf"
# The 15 methods of the release before the method specs: users' scripts name them, so they stay.
_OLD_NAMES = {"pddm_quadruplet", "pddm_triplet", "euclidean_quadruplet", "contrastive", "triplet_semihard",
              "triplet_batchhard", "lifted_structured", "npair", "margin", "multi_similarity", "hdml_npair",
              "hdml_triplet", "hdml_pddm", "dc_margin", "dc_pddm"}


def _net():
    return small_convnet(16, 1, width=4, depth=2)


@pytest.fixture
def registered():
    """Registers method specs for one test and removes them after."""
    added = []

    def register(spec):
        register_method(spec)
        added.append(spec.name)
        return spec

    yield register
    for name in added:
        METHOD_SPECS.unregister(name)


def test_method_names_stay_and_each_is_spelled_in_at_most_two_files():
    assert _OLD_NAMES <= set(METHOD_NAMES)
    for name in _OLD_NAMES:
        # The name as a value: not a dict key or subscript ("margin": 0.2 and settings["margin"] are the
        # triplet losses' option of that name, not the method) nor an HDML base (base="npair").
        quoted = re.compile(rf"(?<!\[)(?<!base=)[\"']{name}[\"'](?!\s*[:\]])")
        files = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path.name != "recipes.py" and quoted.search(path.read_text())]
        # "margin" is also a loss's argument name, "npair" a miner's and an HDML base's: the words, not
        # the methods, in losses/, miners/ and models/ (other helpers' files).
        files = [f for f in files if not (name in ("margin", "npair") and f.startswith(("losses/", "miners/",
                                                                                         "models/")))]
        assert len(files) <= 2, (name, files)


def test_the_method_table_imports_no_tensorflow():
    code = ("import sys; from pddm_tf.methods import catalog; from pddm_tf.training import TrainConfig; "
            "TrainConfig.from_flags(method='dc_pddm', num_learners=2, embedding_dim=8).check(); "
            "print(len(catalog.METHOD_SPECS), 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=PACKAGE.parent)
    assert result.stdout.split() == [str(len(METHOD_SPECS)), "False", "False"], result.stderr[-2000:]


def test_a_misspelt_option_raises_naming_it_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"'pddm_quadruplet' takes no option 'aplha'; its options are 'alpha', "
                                         r"'beta', 'dropout', 'embedding_weight', 'mining', 'mining_score', "
                                         r"'pddm_normalize_inputs', 'rerank', 'training_classes'"):
        build_model("pddm_quadruplet", _net(), 8, aplha=1.0)
    with pytest.raises(ValueError, match=r"no method takes the option 'aplha'; 'margin' takes 'dropout'"):
        method_options("margin", alpha=1.0, aplha=1.0)
    # A flag of other methods only is refused by build_model (it would be ignored), dropped by method_options.
    with pytest.raises(ValueError, match=r"'dc_margin' takes no option 'alpha'"):
        build_model("dc_margin", _net(), 8, alpha=1.0)
    assert method_options("margin", alpha=1.0, dropout=0.25, num_learners=2) == {"dropout": 0.25}
    with pytest.raises(ValueError, match="unknown method 'pddm'"):
        method_options("pddm")


def test_every_method_receives_its_flags_through_the_config():
    config = TrainConfig.from_flags(dropout=0.125)
    for name, spec in METHOD_SPECS.items():
        given = {flag: value for flag, value in {"alpha": 0.3, "beta": 0.7, "embedding_weight": 0.2,
                                                 "num_learners": 2, "hdml_beta": 500.0,
                                                 "pddm_normalize_inputs": True}.items() if flag in spec.flags}
        run_config = config.with_flags(method=name, **given)
        run_config.check()
        model = spec.build(_net(), 8, training_run.method_settings(run_config, num_classes=3))
        assert model.dropout == 0.125, name
        if isinstance(model, PDDMModel):
            loss = model.hinge_loss
            assert (loss.alpha, loss.beta, loss.embedding_weight) == (0.3, 0.7, 0.2), name
        if isinstance(model, DivideAndConquerModel):
            assert model.num_learners == 2, name
        if isinstance(model, HDMLModel):
            assert model.num_classes == 3 and model.hardness.beta == 500.0, name
        if getattr(model, "pddm", None) is not None:  # issue 31: never dropped for DC and HDML
            assert model.pddm.normalize_inputs is True, name
        assert ("rerank" in spec.flags) == (getattr(model, "pddm", None) is not None), name


def test_a_flag_the_method_does_not_use_is_refused_in_one_line():
    for method, flag, value in (("dc_margin", "pddm_normalize_inputs", False), ("triplet_batchhard", "rerank", 3),
                                ("npair", "mining", "hardest"), ("hdml_npair", "num_learners", 2),
                                ("pddm_quadruplet", "hdml_beta", 10.0)):
        with pytest.raises(ConfigError) as error:
            TrainConfig.from_flags(method=method, **{flag: value}).check()
        text = str(error.value)
        assert text.startswith(f"--{flag}=") and f"is not used by --method={method}" in text and "\n" not in text
    assert set(GENERAL_FLAGS) == {f for spec in METHOD_SPECS.values() for f in spec.flags}  # each used somewhere


def test_loss_options_reach_every_loss_typed_and_bounded():
    """Every option of every method with options, moved off its default, reaches the loss."""
    with_options = [name for name, spec in METHOD_SPECS.items() if spec.options]
    assert {"contrastive", "triplet_semihard", "triplet_batchhard", "lifted_structured", "npair", "margin",
            "multi_similarity"} <= set(with_options)
    for name in with_options:
        spec = METHOD_SPECS[name]
        changed = {key: option.default * 0.5 + 0.25 for key, option in spec.options.items()
                   if option.kinds == (float,)}
        changed |= {key: option.default + 1 for key, option in spec.options.items()
                    if option.kinds == (int,) and option.default is not None}
        if name == "contrastive":  # needs pos_margin < neg_margin
            changed = {"pos_margin": 0.1, "neg_margin": 0.8}
        assert changed, name
        # training_classes: the proxy losses' weights need it (issue 32).
        got = build_model(name, _net(), 8, loss_options=changed, training_classes=4).embedding_loss.get_config()
        for key, value in changed.items():
            assert got[key] == pytest.approx(value), (name, key)
    refusals = [
        ("triplet_batchhard", {"margn": 0.3}, "method triplet_batchhard has no option margn; its options are: "
                                              "margin, distance"),
        ("triplet_batchhard", {"margin": "big"}, "--loss_options margin='big' is a string; expected a number"),
        ("margin", {"learn_beta": 1}, "--loss_options learn_beta=1 is an integer; expected a bool"),
        ("npair", {"l2_reg": True}, "--loss_options l2_reg=True is a bool; expected a number"),
        ("npair", {"l2_reg": -0.5}, "--loss_options l2_reg=-0.5 is out of range: allowed >= 0"),
        ("npair", {"l2_reg": float("nan")}, "--loss_options l2_reg=nan is out of range"),
        ("triplet_batchhard", {"distance": "manhattan"}, "--loss_options distance=manhattan: expected one of "
                                                         "euclidean, squared_euclidean, cosine"),
        ("triplet_batchhard", {"miner": "semi_hard"}, "has no option miner"),  # the mining defines the method
        ("pddm_quadruplet", {"margin": 0.3}, "method pddm_quadruplet has no option margin; its options are: none"),
    ]
    for name, options, message in refusals:
        with pytest.raises(ConfigError, match=re.escape(message)):
            TrainConfig.from_flags(method=name, loss_options=options).check()
        with pytest.raises(ValueError, match=re.escape(message)):
            build_model(name, _net(), 8, loss_options=options)
    assert build_model("npair", _net(), 8, loss_options={"l2_reg": 1}).embedding_loss.get_config()["l2_reg"] == 1.0
    with pytest.raises(ConfigError, match="contrastive needs pos_margin < neg_margin, got 0.6 and 0.5"):
        TrainConfig.from_flags(method="contrastive", loss_options='{"pos_margin": 0.6}').check()


def test_a_plugin_spec_gets_options_and_rerank_as_a_built_in_one(registered):
    def build(backbone, embedding_dim, settings):
        loss = TripletLoss(margin=settings["margin"], miner="batch_hard")
        return MetricLossModel(backbone, loss, embedding_dim=embedding_dim, dropout=settings["dropout"])

    registered(MethodSpec(name="test_wide_triplet", summary="a test", build=build,
                          options={"margin": Setting(float, 0.1, "the margin", Bound(0, 2))}, flags={"rerank": 0}))
    config = TrainConfig.from_flags(method="test_wide_triplet", loss_options='{"margin": 0.4}', rerank=3)
    config.check()
    model = build_model("test_wide_triplet", _net(), 8, margin=0.4)
    assert model.embedding_loss.margin == 0.4
    assert training_run.method_settings(config, 2)["rerank"] == 3
    with pytest.raises(ConfigError, match=r"--loss_options margin=2.5 is out of range: allowed >= 0 and <= 2"):
        TrainConfig.from_flags(method="test_wide_triplet", loss_options={"margin": 2.5}).check()
    with pytest.raises(ValueError, match="are not general method flags"):
        MethodSpec(name="test_bad", summary="", build=build, flags={"margin": 0.1})
    with pytest.raises(ValueError, match="default margin=-1.0 is out of range"):
        MethodSpec(name="test_bad", summary="", build=build, options={"margin": Setting(float, -1.0, "", Bound(0))})


def test_the_old_register_method_still_works_with_a_deprecation_warning():
    def wide_triplet(backbone, embedding_dim, *, margin: float = 0.1, dropout: float = 0.0):
        return MetricLossModel(backbone, TripletLoss(margin=margin), embedding_dim=embedding_dim, dropout=dropout)

    with pytest.warns(DeprecationWarning, match=r"register_method\(name, builder\) is deprecated; use "
                                                r"register_method\(MethodSpec"):
        register_method("test_old_style", wide_triplet)
    try:
        assert METHOD_OPTIONS["test_old_style"] == ("margin", "dropout", "training_classes")
        model = build_model("test_old_style", _net(), 8, margin=0.4, dropout=0.25)
        assert model.embedding_loss.margin == 0.4 and model.dropout == 0.25
        with pytest.raises(ValueError, match="takes no option 'alpha'"):
            build_model("test_old_style", _net(), 8, alpha=1.0)
    finally:
        METHOD_SPECS.unregister("test_old_style")


def test_an_unknown_method_is_one_line_listing_the_known():
    with pytest.raises(ConfigError, match=r"^--method=pddm_quadruplets: unknown method; expected one of .*dc_pddm"):
        check_method_config(MethodConfig(name="pddm_quadruplets"))
    assert list(METHODS) == list(METHOD_SPECS)


def test_a_loss_option_changes_the_loss_as_the_numpy_reference():
    """triplet_batchhard with margin 0.7: mean over anchors of max(0, hardest D_ap - hardest D_an + 0.7)."""
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses_first = [first.train_on_batch(images, labels) for _ in range(3)]
        losses_second = [second.train_on_batch(images, labels) for _ in range(3)]
    np.testing.assert_allclose(losses_second, losses_first, rtol=1e-5)
