"""Tests of pddm_tf.backbones (named backbones, preprocessing, frozen BatchNorm) and GeMPooling."""

from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf.backbones import BACKBONES, Backbone, BackbonePreprocessing, backbone, small_convnet
from pddm_tf.layers import GeMPooling

_apps = keras.applications

# Smallest variant of each family: (image size, published feature width k, keras.applications
# module with the family's preprocess_input, reference constructor for the networks that rescale
# their input themselves; None for the two that contain no preprocessing at all).
FAMILIES = {
    "ResNet50": (32, 2048, _apps.resnet50, None),
    "InceptionV3": (75, 2048, _apps.inception_v3, None),
    "EfficientNetV2B0": (32, 1280, _apps.efficientnet_v2, _apps.EfficientNetV2B0),
    "ConvNeXtTiny": (64, 768, _apps.convnext, _apps.ConvNeXtTiny),  # 64: a 2x2 final map, so pool-then-norm matters
    "MobileNetV3Small": (32, 576, _apps.mobilenet_v3, _apps.MobileNetV3Small),
}


def _pixels(size: int, channels: int = 3, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, size, size, channels)).astype("float32")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """One family's smallest backbone (avg pooling, random weights) and its features of two images."""
    name = request.param
    size, k, module, reference = FAMILIES[name]
    # MobileNetV3Small is also needed by other tests: build it once.
    model = request.getfixturevalue("mobilenets")[0] if name == "MobileNetV3Small" else backbone(name, size)
    x = _pixels(size)
    features = keras.ops.convert_to_numpy(model(x, training=False))
    return SimpleNamespace(name=name, size=size, k=k, module=module, reference=reference, model=model, x=x,
                           features=features)


@pytest.fixture(scope="module")
def mobilenets():
    """MobileNetV3Small backbones sharing weights: RGB, and grey with frozen BatchNorm."""
    rgb = backbone("MobileNetV3Small", 32)
    grey_frozen = backbone("mobilenetv3small", 32, channels=1, freeze_batchnorm=True)
    grey_frozen.set_weights(rgb.get_weights())
    return rgb, grey_frozen


# -- named backbones -----------------------------------------------------------------------------

def test_family_features_have_published_width_and_are_finite(family):
    assert isinstance(family.model, Backbone)
    assert family.model.output_shape == (None, family.k)
    assert family.features.shape == (2, family.k)
    assert np.isfinite(family.features).all()
    # Not a constant map: two different images give different features (random-weight features
    # can be tiny, e.g. ~1e-10 for MobileNetV3, hence the relative comparison).
    scale = np.abs(family.features).max()
    assert scale > 0 and np.abs(family.features[0] - family.features[1]).max() > 1e-3 * scale


def test_builtin_preprocessing_equals_keras_preprocess_input(family):
    layer = family.model.get_layer("preprocessing")
    expected = family.module.preprocess_input(255.0 * family.x.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(family.x)), expected, rtol=1e-6, atol=1e-4)
    # Grey input: the single channel is used as R = G = B.
    grey = family.x[..., :1]
    expected_grey = family.module.preprocess_input(255.0 * np.repeat(grey, 3, axis=-1))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(grey)), expected_grey, rtol=1e-6, atol=1e-4)


def test_backbone_equals_keras_application_on_preprocessed_pixels(family):
    """End to end: backbone(x) == average pooling of the keras.applications network applied to
    preprocess_input(255 x).

    ResNet50 and InceptionV3 contain no preprocessing of their own, so their reference is the
    network inside the backbone (keras' own object) fed by keras' preprocess_input: this checks the
    wiring. EfficientNetV2, ConvNeXt and MobileNetV3 rescale their input themselves; their reference
    is a separately built `keras.applications.<Net>(pooling="avg")` carrying the same weights, which
    also checks that they were built with their rescaling and, for ConvNeXt, that the head norm
    follows the pooling.
    """
    preprocessed = family.module.preprocess_input(255.0 * family.x.copy())
    if family.reference is None:
        net = family.model.layers[2]
        assert isinstance(net, keras.Model) and not isinstance(net, Backbone)
        feature_map = keras.ops.convert_to_numpy(net(preprocessed, training=False))
        expected = feature_map.mean(axis=(1, 2))
    else:
        ref = family.reference(include_top=False, weights=None, input_shape=(family.size, family.size, 3),
                               pooling="avg")
        ours = family.model.get_weights()
        assert [w.shape for w in ref.get_weights()] == [w.shape for w in ours]
        ref.set_weights(ours)
        expected = keras.ops.convert_to_numpy(ref(preprocessed, training=False))
    np.testing.assert_allclose(family.features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_grey_backbone_equals_rgb_backbone_on_repeated_channel(mobilenets):
    rgb, grey = mobilenets
    x = _pixels(32, channels=1)
    expected = keras.ops.convert_to_numpy(rgb(np.repeat(x, 3, axis=-1), training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(grey(x, training=False)), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_preprocessing_modes_equal_imagenet_utils(mode):
    x = _pixels(5, seed=2)
    expected = _apps.imagenet_utils.preprocess_input(255.0 * x.copy(), mode=mode)
    got = keras.ops.convert_to_numpy(BackbonePreprocessing(mode)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_registry_covers_required_families_and_lookup_ignores_case():
    for required in ["ResNet50", "InceptionV3", "EfficientNetV2B0", "EfficientNetV2S", "ConvNeXtTiny",
                     "MobileNetV3Small", "MobileNetV3Large", "small_convnet"]:
        assert required in BACKBONES
    assert backbone("SMALL_CONVNET", 16, channels=1, width=4, depth=2).name == "small_convnet_avg"


def test_small_convnet_poolings_reduce_its_feature_map():
    x = _pixels(16, channels=1, n=3)
    by_pooling = {p: backbone("small_convnet", 16, channels=1, width=6, depth=2, pooling=p)
                  for p in ("avg", "max", "gem")}
    for pooling, model in by_pooling.items():
        feature_map = keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("pool1").output)(x))
        expected = {"avg": feature_map.mean(axis=(1, 2)), "max": feature_map.max(axis=(1, 2)),
                    "gem": _gem_reference(feature_map, 3.0, 1e-6)}[pooling]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, rtol=1e-5, atol=1e-6)
    # The registry's "avg" small_convnet is the library's small_convnet itself.
    plain = small_convnet(16, 1, width=6, depth=2)
    plain.set_weights(by_pooling["avg"].get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)),
                               keras.ops.convert_to_numpy(by_pooling["avg"](x)), rtol=1e-6)


# -- errors --------------------------------------------------------------------------------------

def test_unknown_name_lists_known_backbones():
    with pytest.raises(ValueError, match="unknown backbone 'VGG16'.*ResNet50.*InceptionV3"):
        backbone("VGG16", 64)


@pytest.mark.parametrize("name, size, minimum", [("InceptionV3", 74, 75), ("ResNet50", 31, 32),
                                                 ("ConvNeXtTiny", 16, 32)])
def test_too_small_image_names_the_minimum(name, size, minimum):
    with pytest.raises(ValueError, match=f"{name} needs image_size >= {minimum}, got {size}"):
        backbone(name, size)


def test_other_argument_errors():
    with pytest.raises(ValueError, match="at least 16"):
        backbone("small_convnet", 8, channels=1)  # 4 pooling blocks
    with pytest.raises(ValueError, match="unknown pooling"):
        backbone("ResNet50", 32, pooling="sum")
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3"):
        backbone("ResNet50", 32, channels=2)
    with pytest.raises(ValueError, match="no pretrained weights"):
        backbone("small_convnet", 32, weights="imagenet")


# -- GeM -----------------------------------------------------------------------------------------

def _gem_reference(x: np.ndarray, p: float, eps: float) -> np.ndarray:
    """(mean over h, w of max(x, eps)^p)^(1/p) in float64: [n, h, w, c] -> [n, c]."""
    x = np.maximum(x.astype("float64"), eps)
    return np.mean(x ** p, axis=(1, 2)) ** (1.0 / p)


@pytest.mark.parametrize("p", [3.0, 1.7])
def test_gem_equals_numpy_reference(p):
    x = np.random.default_rng(3).normal(0.5, 1.0, (2, 5, 4, 3)).astype("float32")  # some negatives: clamped
    got = keras.ops.convert_to_numpy(GeMPooling(p=p, eps=1e-3)(x))
    np.testing.assert_allclose(got, _gem_reference(x, p, 1e-3), rtol=1e-5)


def test_gem_p1_is_average_and_large_p_approaches_max():
    x = np.random.default_rng(4).uniform(0.1, 1.0, (2, 4, 5, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(GeMPooling(p=1.0)(x)), x.mean(axis=(1, 2)), rtol=1e-5)
    large = keras.ops.convert_to_numpy(GeMPooling(p=500.0)(x))
    # mean(x^p)^(1/p) lies in [max * (1/20)^(1/p), max]: within 0.6 % of the maximum at p = 500.
    assert np.all(large <= x.max(axis=(1, 2)) * (1 + 1e-6))
    np.testing.assert_allclose(large, x.max(axis=(1, 2)), rtol=6e-3)
    np.testing.assert_allclose(large, _gem_reference(x, 500.0, 1e-6), rtol=1e-5)


def test_gem_large_values_and_p_stay_finite():
    # 100^50 overflows float32: a direct x^p would give inf / inf.
    x = np.random.default_rng(5).uniform(1.0, 100.0, (2, 3, 3, 4)).astype("float32")
    got = keras.ops.convert_to_numpy(GeMPooling(p=50.0)(x))
    np.testing.assert_allclose(got, _gem_reference(x, 50.0, 1e-6), rtol=1e-5)


def test_gem_gradients_match_finite_differences():
    x = np.random.default_rng(6).uniform(0.05, 2.0, (1, 3, 3, 2))
    layer = GeMPooling(p=2.5, dtype="float64")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(layer(xt))
    grad_x, grad_p = tape.gradient(total, [xt, layer.p])
    h = 1e-6

    def f(xv, p):
        return _gem_reference(xv, p, 1e-6).sum()

    assert float(grad_p) == pytest.approx((f(x, 2.5 + h) - f(x, 2.5 - h)) / (2 * h), rel=1e-5)
    bump = np.zeros_like(x)
    bump[0, 1, 2, 1] = h
    assert float(grad_x[0, 1, 2, 1]) == pytest.approx((f(x + bump, 2.5) - f(x - bump, 2.5)) / (2 * h), rel=1e-5)


def test_gem_channels_first_and_p_trainability():
    x = np.random.default_rng(7).uniform(0.0, 1.0, (2, 3, 4, 5)).astype("float32")
    last = GeMPooling()(x)
    first = GeMPooling(data_format="channels_first")(np.transpose(x, (0, 3, 1, 2)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first), keras.ops.convert_to_numpy(last), rtol=1e-6)
    learned, fixed = GeMPooling(), GeMPooling(learn_p=False)
    learned.build((None, 3, 4, 5))
    fixed.build((None, 3, 4, 5))
    assert len(learned.trainable_weights) == 1 and len(fixed.trainable_weights) == 0
    with pytest.raises(ValueError, match="p > 0"):
        GeMPooling(p=0.0)


def test_gem_serialization_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 3))
    layer = GeMPooling(p=3.0, eps=1e-4, name="gem")
    model = keras.Model(inputs, layer(inputs))
    layer.p.assign(2.25)  # a learned value, which must come back with the weights
    x = np.random.default_rng(8).uniform(0.0, 1.0, (2, 4, 4, 3)).astype("float32")
    path = tmp_path / "gem.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.get_layer("gem")
    assert isinstance(restored, GeMPooling)
    assert float(restored.p) == 2.25 and restored.eps == 1e-4
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), _gem_reference(x, 2.25, 1e-4), rtol=1e-5)
    clone = GeMPooling.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


# -- frozen BatchNorm ----------------------------------------------------------------------------

def _batchnorms(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _tiny_model(freeze: bool):
    """Sequential(small_convnet backbone, Dense(3)) compiled for one SGD step of squared error."""
    bb = backbone("small_convnet", 16, channels=1, width=8, depth=2, freeze_batchnorm=freeze)
    model = keras.Sequential([keras.Input((16, 16, 1)), bb, keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model, bb


def _snapshot(bb):
    bn = bb.get_layer("bn0")
    return {"moving_mean": bn.moving_mean.numpy().copy(), "moving_variance": bn.moving_variance.numpy().copy(),
            "gamma": bn.gamma.numpy().copy(), "beta": bn.beta.numpy().copy(),
            "kernel": bb.get_layer("conv0").kernel.numpy().copy()}


def _one_step(model):
    rng = np.random.default_rng(9)
    x = rng.uniform(0.0, 1.0, (8, 16, 16, 1)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_unfrozen_batchnorm_updates_statistics_in_fit():
    model, bb = _tiny_model(freeze=False)
    before = _snapshot(bb)
    _one_step(model)
    after = _snapshot(bb)
    for key in before:
        assert not np.allclose(before[key], after[key]), key


def test_frozen_batchnorm_keeps_statistics_and_survives_save_load(tmp_path):
    model, bb = _tiny_model(freeze=True)
    assert len(_batchnorms(bb)) == 2 and not any(layer.trainable for layer in _batchnorms(bb))
    before = _snapshot(bb)
    _one_step(model)
    after = _snapshot(bb)
    for key in ("moving_mean", "moving_variance", "gamma", "beta"):
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert not np.allclose(after["kernel"], before["kernel"])  # the step did train the convolutions

    path = tmp_path / "frozen.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_bb = loaded.layers[0]
    assert isinstance(loaded_bb, Backbone) and loaded_bb.freeze_batchnorm
    assert not any(layer.trainable for layer in _batchnorms(loaded_bb))
    x = _pixels(16, channels=1, n=4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-5, atol=1e-6)
    loaded.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    reloaded_before = _snapshot(loaded_bb)
    _one_step(loaded)
    reloaded_after = _snapshot(loaded_bb)
    np.testing.assert_array_equal(reloaded_after["moving_mean"], reloaded_before["moving_mean"])
    np.testing.assert_array_equal(reloaded_after["moving_variance"], reloaded_before["moving_variance"])
    assert not np.allclose(reloaded_after["kernel"], reloaded_before["kernel"])


def test_frozen_batchnorm_survives_trainable_toggle():
    bb = backbone("small_convnet", 16, channels=1, width=4, depth=2, freeze_batchnorm=True)
    unfrozen = backbone("small_convnet", 16, channels=1, width=4, depth=2)
    bb.trainable = False
    bb.trainable = True
    assert not any(layer.trainable for layer in _batchnorms(bb))
    assert bb.get_layer("conv0").trainable
    # Frozen: conv kernels only; unfrozen: conv kernels, gammas and betas.
    assert len(bb.trainable_weights) == 2 and len(unfrozen.trainable_weights) == 6


def test_frozen_application_runs_batchnorm_in_inference_mode(mobilenets):
    rgb, frozen = mobilenets
    inner = frozen.get_layer("MobileNetV3Small")
    assert len(_batchnorms(inner)) > 10 and not any(layer.trainable for layer in _batchnorms(inner))
    assert all(layer.trainable for layer in _batchnorms(rgb.get_layer("MobileNetV3Small")))
    x = _pixels(32, channels=1, seed=10)
    inference = keras.ops.convert_to_numpy(frozen(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(frozen(x, training=True)), inference, rtol=1e-5,
                               atol=1e-5 * np.abs(inference).max())
    # The unfrozen network normalises with batch statistics in training mode, hence differently
    # (that call also updates its moving statistics, so restore them for other tests).
    weights = rgb.get_weights()
    unfrozen_training = keras.ops.convert_to_numpy(rgb(np.repeat(x, 3, axis=-1), training=True))
    rgb.set_weights(weights)
    assert np.abs(unfrozen_training - inference).max() > 1e-2 * np.abs(inference).max()
