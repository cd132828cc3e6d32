"""ProxyLossModel: the proxies' learning-rate multiplier, MirroredStrategy with the global batch,
saving, bit-exact resumption after an interruption, and the proxy methods."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from interrupt import fit_interrupted

import pddm_tf
from pddm_tf import backbones, data, methods
from pddm_tf.losses import ProxyAnchorLoss, SoftTripleLoss
from pddm_tf.models import MetricLossModel, ProxyLossModel, ScaledSchedule
from pddm_tf.options import ConfigError
from pddm_tf.training import TrainConfig
from pddm_tf.training.optimizers import WarmupCosine

SIZE, CLASSES, PER_CLASS, DIM = 16, 8, 4, 8
PROXY_METHODS = ("proxy_anchor", "proxy_nca", "normalized_softmax", "soft_triple", "arcface", "cosface",
                 "subcenter_arcface")


def _batches(steps=3, seed=0):
    rng = np.random.default_rng(seed)
    templates = rng.random((CLASSES, SIZE, SIZE, 1)).astype(np.float32)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS).astype(np.int32)
    images = 0.5 * rng.random((steps, CLASSES * PER_CLASS, SIZE, SIZE, 1)).astype(np.float32) + templates[labels]
    return images, np.broadcast_to(labels, (steps, len(labels))).copy()


def _model(cls=ProxyLossModel, loss=None):
    keras.utils.set_random_seed(0)
    loss = loss if loss is not None else ProxyAnchorLoss(CLASSES, DIM)
    model = cls(backbones.small_convnet(SIZE, 1, width=8, depth=2), loss, embedding_dim=DIM)
    model.build((None, SIZE, SIZE, 1))
    return model


def _snapshot(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def test_proxies_are_tracked_weights():
    model = _model()
    assert any(v is model.embedding_loss.proxies for v in model.trainable_variables)
    assert model.embedding_loss.proxies.shape == (CLASSES, DIM)


def test_proxies_move_lr_multiplier_times_faster():
    """With SGD, one step moves the proxies `lr_multiplier` x as far as a single optimiser would (the
    same gradient: the same weights and batch) and the network exactly as far."""
    images, labels = _batches(steps=1)
    single = _model(MetricLossModel)
    single.compile(optimizer=keras.optimizers.SGD(0.01))
    split = _model()
    split.compile(optimizer=keras.optimizers.SGD(0.01))
    assert split.proxy_optimizer.learning_rate.numpy() == pytest.approx(1.0)  # 0.01 x 100
    before = _snapshot(split)
    for model in (single, split):
        model.train_on_batch(images[0], labels[0])
    proxies = [i for i, v in enumerate(split.trainable_variables) if v is split.embedding_loss.proxies]
    assert len(proxies) == 1
    for i, (a, b, start) in enumerate(zip(_snapshot(single), _snapshot(split), before)):
        scale = 100.0 if i in proxies else 1.0
        np.testing.assert_allclose(b - start, scale * (a - start), rtol=1e-3, atol=1e-7)
    assert not np.allclose(before[proxies[0]], _snapshot(split)[proxies[0]])
    assert int(split.optimizer.iterations.numpy()) == int(split.proxy_optimizer.iterations.numpy()) == 1


def test_a_schedule_is_scaled_too():
    schedule = WarmupCosine(1e-3, total_steps=10, warmup_steps=2)
    model = _model(loss=SoftTripleLoss(CLASSES, DIM, centers_per_class=2))
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    copy = model.proxy_optimizer
    for step in (0, 1, 5, 9):
        assert float(copy._learning_rate(step)) == pytest.approx(100 * float(schedule(step)), rel=1e-6)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(copy._learning_rate))
    assert isinstance(again, ScaledSchedule) and float(again(5)) == pytest.approx(100 * float(schedule(5)))


def test_given_proxy_optimizer_is_used():
    model = _model()
    model.compile(optimizer="adam", proxy_optimizer=keras.optimizers.SGD(0.5))
    assert isinstance(model.proxy_optimizer, keras.optimizers.SGD) and model.proxy_optimizer.built


def test_a_loss_without_proxies_is_refused():
    with pytest.raises(ValueError, match="needs a loss with proxies"):
        _model(loss=pddm_tf.TripletLoss())


#: Losses of the strategy test: name -> factory. SoftTriple with its centre regulariser (a term on the
#: proxies, not the batch) checks that it is counted once over the replicas, not once per replica.
STRATEGY_LOSSES = {
    "proxy_anchor": lambda: ProxyAnchorLoss(CLASSES, DIM),
    "soft_triple_center_regularizer": lambda: SoftTripleLoss(CLASSES, DIM, centers_per_class=2,
                                                             center_regularizer=4.0),
}


def _train(strategy, images, labels, loss="proxy_anchor"):
    with strategy.scope():
        keras.utils.set_random_seed(0)  # the proxies' initial values, the same in both runs
        model = _model(loss=STRATEGY_LOSSES[loss]())
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(tf.data.Dataset.from_tensor_slices((images, labels)), epochs=1, verbose=0)
    return model, history.history["loss"][0]


@pytest.mark.parametrize("loss", sorted(STRATEGY_LOSSES))
def test_mirrored_two_replicas_equal_one_device(two_replicas, loss):
    """The global batch of 32 split over two replicas trains the network and the proxies (each on its
    own optimiser) as one device does."""
    images, labels = _batches(steps=3)
    single, single_loss = _train(tf.distribute.get_strategy(), images, labels, loss)
    mirrored, mirrored_loss = _train(two_replicas, images, labels, loss)
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-4)
    for a, b in zip(single.weights, mirrored.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    fresh = _model(loss=STRATEGY_LOSSES[loss]())
    assert not np.allclose(single.embedding_loss.proxies.numpy(), fresh.embedding_loss.proxies.numpy())


def test_save_and_load_round_trip(tmp_path):
    images, labels = _batches(steps=2)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.train_on_batch(images[0], labels[0])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ProxyLossModel) and isinstance(loaded.embedding_loss, ProxyAnchorLoss)
    assert loaded.embedding_loss.lr_multiplier == 100.0
    np.testing.assert_array_equal(loaded.embedding_loss.proxies.numpy(), model.embedding_loss.proxies.numpy())
    for a, b in zip(loaded.proxy_optimizer.variables, model.proxy_optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The loaded model continues exactly as the original does.
    model.train_on_batch(images[1], labels[1])
    loaded.train_on_batch(images[1], labels[1])
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)




def _method_run(method, files, backup_dir=None, interrupt=None, model=None):
    if model is None:
        keras.utils.set_random_seed(0)
        model = methods.build_model(method, backbones.small_convnet(SIZE, 1, width=8), 16,
                                    training_classes=files.num_classes)
        model.build((None, SIZE, SIZE, 1))
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    dataset, callbacks = methods.training_pipeline(model, files, 4, 2, SIZE, 1, seed=1, steps_per_epoch=3,
                                                   backup_dir=backup_dir)
    fit_interrupted(model, dataset, callbacks, interrupt)
    return model, callbacks


@pytest.mark.slow
@pytest.mark.parametrize("method", ["proxy_anchor", "soft_triple"])
def test_interrupted_run_resumes_bit_exactly(method, tmp_path):
    """Interrupted mid-epoch 2 and resumed from the epoch-2 backup, a proxy method ends with the weights
    (proxies included) and both optimisers' states of an uninterrupted run, bit for bit."""
    files = data.load_dataset("omniglot").train
    reference, _ = _method_run(method, files)
    interrupted, _ = _method_run(method, files, tmp_path / "backup", interrupt=2)
    assert (tmp_path / "backup" / "latest").read_text() == "backup-2"
    # Scramble everything the backup must bring back, the proxies and their optimiser included.
    rng = np.random.default_rng(5)
    interrupted.set_weights([rng.standard_normal(w.shape).astype(w.dtype) for w in interrupted.get_weights()])
    for optimizer in (interrupted.optimizer, interrupted.proxy_optimizer):
        for variable in optimizer.variables:
            variable.assign(np.full(variable.shape, 7, variable.dtype))
    resumed, callbacks = _method_run(method, files, tmp_path / "backup", model=interrupted)
    assert callbacks[0].restored_epoch == 2
    assert int(resumed.proxy_optimizer.iterations.numpy()) == 12
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(resumed.embedding_loss.proxies.numpy(), reference.embedding_loss.proxies.numpy())
    for a, b in zip(resumed.proxy_optimizer.variables, reference.proxy_optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("method", PROXY_METHODS)
def test_methods_build_a_proxy_model(method):
    model = methods.build_model(method, backbones.small_convnet(SIZE, 1, width=8), DIM, training_classes=5)
    assert isinstance(model, ProxyLossModel)
    loss = model.embedding_loss
    assert loss.num_classes == 5 and loss.embedding_size == DIM
    assert loss.lr_multiplier == methods.METHOD_SPECS[method].options["lr_multiplier"].default


def test_method_options_are_checked_at_the_edge():
    spec = methods.METHOD_SPECS["proxy_anchor"]
    with pytest.raises(ConfigError):
        spec.parse_options({"alpha": -1})
    with pytest.raises(ConfigError):
        methods.METHOD_SPECS["arcface"].parse_options({"distance": "euclidean"})
    model = methods.build_model("proxy_nca", backbones.small_convnet(SIZE, 1, width=8), DIM, training_classes=5,
                                loss_options={"softmax_scale": 9.0, "num_classes": 7})
    assert model.embedding_loss.softmax_scale == 9.0 and model.embedding_loss.num_classes == 7


def test_soft_triple_center_regularizer_option():
    """`--loss_options center_regularizer` reaches the loss (and its config); with one centre per class it is
    refused before any work, by the run's check and by the loss, each with one line."""
    model = methods.build_model("soft_triple", backbones.small_convnet(SIZE, 1, width=8), DIM, training_classes=5,
                                loss_options={"center_regularizer": 0.2, "centers_per_class": 3})
    assert model.embedding_loss.center_regularizer == 0.2
    assert model.embedding_loss.get_config()["center_regularizer"] == 0.2
    default = methods.build_model("soft_triple", backbones.small_convnet(SIZE, 1, width=8), DIM, training_classes=5)
    assert default.embedding_loss.center_regularizer == 0.0
    with pytest.raises(ConfigError, match="center_regularizer=-1.0 is out of range"):
        methods.METHOD_SPECS["soft_triple"].parse_options({"center_regularizer": -1.0})
    options = '{"center_regularizer": 0.2, "centers_per_class": 1}'
    with pytest.raises(ConfigError, match="center_regularizer=0.2 needs centers_per_class >= 2") as error:
        TrainConfig.from_flags(method="soft_triple", loss_options=options).check()
    assert "\n" not in str(error.value)
    TrainConfig.from_flags(method="soft_triple", loss_options='{"center_regularizer": 0.2}').check()
    with pytest.raises(ValueError, match="needs centers_per_class >= 2"):
        methods.build_model("soft_triple", backbones.small_convnet(SIZE, 1, width=8), DIM, training_classes=5,
                            loss_options={"center_regularizer": 0.2, "centers_per_class": 1})


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def _cli(args):
    return [sys.executable, "-m", "pddm_tf.cli", "train", "--method=proxy_anchor", "--image_size=16",
            "--backbone_width=8", "--embedding_dim=16", "--batch_classes=4", "--batch_per_class=2",
            "--test_fraction=0.5", "--epochs=3", "--steps_per_epoch=10", *args]


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_same_weights(tmp_path):
    """`pddm-tf train --method=proxy_anchor` killed with SIGKILL after its first backup and run again in
    a fresh process resumes and ends with the weights (proxies included) of an uninterrupted run."""
    env = {**_env(), "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    whole = subprocess.Popen(_cli([f"--save_model={tmp_path / 'whole.keras'}",
                                   f"--backup_dir={tmp_path / 'backup_whole'}"]),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    backup = tmp_path / "backup"
    resumable = _cli([f"--save_model={tmp_path / 'resumed.keras'}", f"--backup_dir={backup}"])
    victim = subprocess.Popen(resumable, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 600
        while not (backup / "latest").exists():  # the first backup is written when epoch 1 begins
            assert victim.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    assert not (tmp_path / "resumed.keras").exists()
    interrupted_at = (backup / "latest").read_text()
    resumed = subprocess.run(resumable, capture_output=True, text=True, env=env, timeout=600)
    whole_out, _ = whole.communicate(timeout=600)
    assert resumed.returncode == 0 and whole.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:],
                                                               whole_out[-3000:])
    assert f"resumed from {backup / interrupted_at}" in resumed.stdout + resumed.stderr
    restored = keras.saving.load_model(tmp_path / "resumed.keras")
    reference = keras.saving.load_model(tmp_path / "whole.keras")
    assert isinstance(restored, ProxyLossModel)
    for a, b in zip(restored.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(restored.embedding_loss.proxies.numpy(), reference.embedding_loss.proxies.numpy())


def test_mixed_float16_is_refused_with_one_line():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = ProxyLossModel(backbones.small_convnet(SIZE, 1, width=8, depth=2), ProxyAnchorLoss(CLASSES, DIM),
                               embedding_dim=DIM)
        with pytest.raises(ValueError, match="does not support the mixed_float16 policy"):
            model.compile(optimizer="adam")
    finally:
        keras.mixed_precision.set_global_policy(previous)
