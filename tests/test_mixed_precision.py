"""Mixed precision (keras.mixed_precision): the network computes in bfloat16 / float16, while variables,
embeddings, losses and PDDM scores stay float32; mixed_float16 goes through the optimizer's loss scaling."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from pddm_tf import PDDM, small_convnet
from pddm_tf.cli import main as cli
from pddm_tf.export import export_saved_model
from pddm_tf.methods import build_model, method_options

SIZE = 16
# bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.002 per operation); a few conv layers,
# BatchNorm and the projection accumulate it. Measured on this project's Intel CPU: embeddings differ by
# at most 0.005 from float32, the step-0 loss by 1e-4 relative (mining picks the same quadruplets). The
# bounds leave about 5x (embeddings) and 200x (loss) room for other CPUs' kernels (oneDNN fusions round
# differently); the float32-ness of embeddings, scores and variables is checked exactly, not by tolerance.
EMBEDDING_ATOL = 0.03
LOSS_RTOL = 0.02


@pytest.fixture(autouse=True)
def float32_policy_after():
    """Every test leaves the global policy as it found it, whatever happens."""
    previous = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(previous)


def _batch():
    rng = np.random.default_rng(0)
    return rng.random((16, SIZE, SIZE, 1)).astype(np.float32), np.repeat(np.arange(4), 4).astype(np.int32)


def _model(policy: str, method: str = "pddm_quadruplet", optimizer=None):
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = build_model(method, small_convnet(SIZE, 1, width=8), 8, **method_options(method, num_classes=4,
                                                                                     num_learners=2))
    model.build((None, SIZE, SIZE, 1))
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3))
    keras.mixed_precision.set_global_policy("float32")
    return model


def test_pddm_quadruplet_under_mixed_bfloat16_matches_float32(tmp_path):
    reference, mixed = _model("float32"), _model("mixed_bfloat16")
    mixed.set_weights(reference.get_weights())
    conv = next(layer for layer in mixed.backbone.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == "bfloat16"  # the network does compute in bfloat16
    assert mixed.pddm.compute_dtype == "float32"
    assert not isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)  # bfloat16 needs no scaling
    images, labels = _batch()

    expected = reference(images).numpy()
    embeddings = mixed(images)
    assert embeddings.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)  # normalised in float32
    np.testing.assert_allclose(embeddings, expected, atol=EMBEDDING_ATOL)
    assert np.abs(embeddings - expected).max() > 0  # bfloat16 did round something: the comparison is real
    scores = mixed.pddm(embeddings)
    assert scores.dtype == tf.float32
    # PDDM in float32: on the same (float32) inputs both models' units give the same scores.
    np.testing.assert_allclose(scores, reference.pddm(embeddings), atol=1e-6)

    # Step 0: the same weights and batch give the float32 loss within bfloat16's precision.
    reference_loss = reference.test_on_batch(images, labels, return_dict=True)["loss"]
    mixed_loss = mixed.test_on_batch(images, labels, return_dict=True)["loss"]
    np.testing.assert_allclose(mixed_loss, reference_loss, rtol=LOSS_RTOL)

    before = [v.numpy() for v in mixed.trainable_variables]
    losses = [mixed.train_on_batch(images, labels, return_dict=True)["loss"] for _ in range(3)]
    assert np.isfinite(losses).all()
    assert all(v.dtype == "float32" for v in mixed.variables if v.dtype != "int64")
    assert any(np.abs(v.numpy() - b).max() > 0 for v, b in zip(mixed.trainable_variables, before))

    # The exported signatures give float32 embeddings, those of the model run as a graph: with oneDNN's
    # kernels (TensorFlow's default on CPUs with AVX-512) a graph fuses bfloat16 ops that eager execution
    # runs one by one, so an eager call can differ from either graph by bfloat16 rounding (measured: 0.003).
    signatures = tf.saved_model.load(export_saved_model(mixed, tmp_path / "export", SIZE, 1)).signatures
    served = signatures["embed_pixels"](pixels=tf.constant(images))["embeddings"]
    assert served.dtype == tf.float32
    traced = tf.function(lambda x: mixed(x, training=False))(tf.constant(images))
    np.testing.assert_allclose(served, traced, atol=1e-5)


def test_mixed_float16_scales_the_loss_through_the_optimizer():
    """With plain SGD the update is lr x gradient: without `optimizer.scale_loss` in the step, the loss scale
    optimizer would divide unscaled gradients by its scale (2^15) and the update would all but vanish."""
    reference = _model("float32", "triplet_batchhard", keras.optimizers.SGD(0.5))
    mixed = _model("mixed_float16", "triplet_batchhard", keras.optimizers.SGD(0.5))
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    mixed.set_weights(reference.get_weights())
    images, labels = _batch()

    def kernel(model):
        return model.head.trainable_variables[0].numpy()  # the projection's kernel

    start = kernel(reference)
    reference.train_on_batch(images, labels)
    loss = mixed.train_on_batch(images, labels, return_dict=True)["loss"]
    assert np.isfinite(loss)
    expected, step = kernel(reference) - start, kernel(mixed) - start
    assert np.linalg.norm(expected) > 1e-4  # the batch trains the projection
    cosine = np.sum(step * expected) / (np.linalg.norm(step) * np.linalg.norm(expected))
    assert cosine > 0.95 and 0.8 < np.linalg.norm(step) / np.linalg.norm(expected) < 1.25


@pytest.mark.parametrize("method", ["hdml_npair", "dc_margin"])
def test_multi_optimizer_methods_refuse_float16_and_train_in_bfloat16(method):
    images, labels = _batch()
    with pytest.raises(ValueError, match="does not support the mixed_float16 policy.*use mixed_bfloat16"):
        _model("mixed_float16", method).train_on_batch(images, labels)  # at compile (D&C) or the first step
    model = _model("mixed_bfloat16", method)
    loss = model.train_on_batch(images, labels, return_dict=True)["loss"]
    assert np.isfinite(loss) and model(images).dtype == tf.float32


def test_cli_flag_sets_the_policy_for_the_model_only():
    try:
        flags.FLAGS(["pddm-tf", "--mixed_precision=bfloat16", f"--image_size={SIZE}", "--backbone_width=8",
                     "--embedding_dim=8", "--method=pddm_quadruplet"])
        model = cli.build_model(channels=1, num_classes=4)
    finally:
        flags.FLAGS.unparse_flags()
    assert model.dtype_policy.name == "mixed_bfloat16" and model.backbone.dtype_policy.name == "mixed_bfloat16"
    assert isinstance(model.pddm, PDDM) and model.pddm.compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored once the model is built
