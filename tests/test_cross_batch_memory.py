"""Cross-batch memory (XBM): the ring buffer against a numpy simulation, the wrapped loss against a numpy
contrastive loss of the batch versus the memory (self pairs excluded), training under a distribution
strategy, and exact resumption of the memory after an interruption."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from interrupt import fit_interrupted

from pddm_tf import backbones, data, losses, methods
from pddm_tf.export import load_keras_model
from pddm_tf.models import MetricLossModel
from pddm_tf.options import ConfigError
from pddm_tf.training import TrainConfig

D, MEMORY = 4, 10


def _numpy_contrastive(x, y, ref_x, ref_y, slots, pos_margin, neg_margin):
    """Contrastive loss (avg_non_zero per half) of batch rows against reference rows, without the pair of
    batch row i with reference row slots[i] (its own copy)."""
    pull, push = [], []
    for i in range(len(x)):
        for j in range(len(ref_x)):
            d = float(np.sqrt(np.sum((x[i].astype(np.float64) - ref_x[j]) ** 2)))
            if y[i] == ref_y[j] and j != slots[i]:
                pull.append(max(d - pos_margin, 0.0) ** 2)
            elif y[i] != ref_y[j]:
                push.append(max(neg_margin - d, 0.0) ** 2)

    def avg_non_zero(values):
        nonzero = [v for v in values if v > 0]
        return sum(nonzero) / max(len(nonzero), 1)

    return avg_non_zero(pull) + avg_non_zero(push)


def test_memory_is_a_ring_buffer_and_the_loss_compares_the_batch_with_it():
    inner = losses.ContrastiveLoss(pos_margin=0.1, neg_margin=1.5)
    xbm = losses.CrossBatchMemory(inner, embedding_size=D, memory_size=MEMORY)
    rng = np.random.default_rng(0)
    memory_x, memory_y, position = np.zeros((MEMORY, D)), np.zeros(MEMORY, int), 0
    for step in range(4):  # 4 batches of 4 rows: the memory wraps around in the third
        x = rng.normal(size=(4, D)).astype(np.float32)
        y = rng.integers(0, 3, size=4)
        slots = [(position + i) % MEMORY for i in range(4)]
        memory_x[slots], memory_y[slots] = x, y
        position += 4
        filled = min(position, MEMORY)
        expected = _numpy_contrastive(x, y, memory_x[:filled], memory_y[:filled], slots, 0.1, 1.5)
        value = float(xbm(y, x))
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6, err_msg=f"step {step}")
        np.testing.assert_array_equal(xbm.memory_labels.numpy(), memory_y)
        np.testing.assert_allclose(xbm.memory_embeddings.numpy(), memory_x, rtol=0, atol=0)
    assert int(xbm.memory_position.numpy()) == 16


def test_the_gradient_flows_into_the_batch_only():
    xbm = losses.CrossBatchMemory(losses.CircleLoss(), embedding_size=D, memory_size=MEMORY)
    x = tf.Variable(np.random.default_rng(1).normal(size=(6, D)).astype(np.float32))
    labels = np.array([0, 0, 1, 1, 2, 2])
    with tf.GradientTape() as tape:
        value = xbm(labels, x)
    gradient = tape.gradient(value, x)
    assert gradient is not None and np.all(np.isfinite(gradient.numpy())) and np.any(gradient.numpy() != 0)
    assert not xbm.memory_embeddings.trainable


def test_a_batch_larger_than_the_memory_is_refused():
    xbm = losses.CrossBatchMemory(losses.NTXentLoss(), embedding_size=D, memory_size=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="memory_size"):
        xbm(np.arange(4) % 2, np.ones((4, D), np.float32))


def test_a_loss_without_a_reference_set_is_refused():
    with pytest.raises(ValueError, match="reference set"):
        losses.CrossBatchMemory(keras.losses.MeanSquaredError(), embedding_size=D)


def test_round_trip_through_keras_saving():
    xbm = losses.CrossBatchMemory(losses.SupConLoss(temperature=0.2), embedding_size=D, memory_size=MEMORY)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(xbm))
    assert clone.get_config() == xbm.get_config() and isinstance(clone.loss, losses.SupConLoss)


def _xbm_model(strategy=None):
    keras.utils.set_random_seed(0)
    scope = strategy.scope() if strategy is not None else tf.init_scope()
    with scope:
        loss = losses.CrossBatchMemory(losses.MultiSimilarityLoss(), embedding_size=8, memory_size=32)
        model = MetricLossModel(backbones.small_convnet(16, 1, width=8), loss, embedding_dim=8)
        model.build((None, 16, 16, 1))
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def test_under_a_strategy_the_memory_and_weights_match_one_device(two_replicas):
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(3, 8, 16, 16, 1)).astype(np.float32)
    labels = np.tile(np.repeat(np.arange(4), 2), (3, 1))
    batches = tf.data.Dataset.from_tensor_slices((images, labels))  # 3 batches of 8: 4 per replica
    single, mirrored = _xbm_model(), _xbm_model(two_replicas)
    single.fit(batches, epochs=1, verbose=0, shuffle=False)
    mirrored.fit(batches, epochs=1, verbose=0, shuffle=False)
    assert int(mirrored.embedding_loss.memory_position.numpy()) == 24
    np.testing.assert_array_equal(mirrored.embedding_loss.memory_labels.numpy()[:24], labels.ravel())
    for a, b in zip(mirrored.weights, single.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)


@pytest.mark.slow
def test_an_interrupted_run_resumes_the_memory_exactly(tmp_path):
    """A circle + XBM run interrupted mid-epoch 2 and resumed from its backup ends with the weights and
    the memory of an uninterrupted run."""
    files = data.load_dataset("omniglot").train

    def run(backup_dir=None, interrupt=None, model=None):
        if model is None:
            keras.utils.set_random_seed(0)
            model = methods.build_model("circle", backbones.small_convnet(16, 1, width=8), 16, xbm=64)
            model.build((None, 16, 16, 1))
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
        dataset, callbacks = methods.training_pipeline(model, files, 4, 2, 16, 1, seed=1, steps_per_epoch=3,
                                                       backup_dir=backup_dir)
        fit_interrupted(model, dataset, callbacks, interrupt)
        return model

    reference = run()
    interrupted = run(tmp_path / "backup", interrupt=2)
    memory = interrupted.embedding_loss.memory_embeddings
    memory.assign(np.full(memory.shape, 3.0, np.float32))  # what the backup must bring back
    resumed = run(tmp_path / "backup", model=interrupted)
    assert int(resumed.embedding_loss.memory_position.numpy()) == 12 * 8
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)




def test_the_cli_trains_a_pair_loss_with_a_memory(tmp_path):
    """`pddm-tf train --method=circle --xbm=64` trains; the saved model's memory holds every batch it
    saw (3 steps x 16 x 4 images = 192 rows written into 64), and the flag is refused for a method
    without a pair loss."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    small = ["--image_size=16", "--backbone_width=8", "--embedding_dim=8", "--epochs=1", "--steps_per_epoch=3",
             "--batch_classes=16", "--episodes=", "--nobackup"]
    run = subprocess.run([sys.executable, "-m", "pddm_tf.cli", "train", *small, "--method=circle", "--xbm=64",
                          f"--save_model={tmp_path}/model.keras"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "recall@1" in run.stdout
    model = load_keras_model(tmp_path / "model.keras")
    assert isinstance(model.embedding_loss, losses.CrossBatchMemory)
    assert int(model.embedding_loss.memory_position.numpy()) == 3 * 16 * 4
    refused = subprocess.run([sys.executable, "-m", "pddm_tf.cli", "train", *small, "--method=npair", "--xbm=64"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--xbm=64" in refused.stderr


def test_a_memory_smaller_than_a_batch_is_refused_before_any_work():
    TrainConfig.from_flags(method="circle", xbm=64, batch_classes=16, batch_per_class=4).check()  # exactly a batch
    with pytest.raises(ConfigError, match=r"--xbm=63 is smaller than a batch \(16 x 4 = 64 images\)"):
        TrainConfig.from_flags(method="circle", xbm=63, batch_classes=16, batch_per_class=4).check()
