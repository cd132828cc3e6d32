"""Multi-worker training, sharded input and embedding, and exact resumption after a kill."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from interrupt import Interrupt, fit_interrupted

from pddm_tf import backbones, data, methods
from pddm_tf.export import load_keras_model
from pddm_tf.models.clustering import ClusterAssignment, cluster_balanced_dataset
from pddm_tf.training import distributed
from pddm_tf.training.fault_tolerance import BackupAndRestore, backup_status

SIZE = 16
# A small run every process below trains: 4 classes x 2 images per batch, 16-d embeddings.
TRAIN_FLAGS = ["--image_size=16", "--backbone_width=8", "--embedding_dim=16", "--batch_classes=4",
               "--batch_per_class=2", "--test_fraction=0.5"]
_TIMEOUT = 300


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _weights(path):
    # load_keras_model registers every pddm_tf class first: plain keras.saving.load_model could not rebuild
    # the optimizer's WarmupCosine schedule unless some earlier test had imported pddm_tf.training.optimizers.
    return load_keras_model(path).get_weights()


def _cli(args, devices=1):
    """argv for `pddm-tf train ...` in a fresh process with `devices` logical CPUs."""
    code = ("import sys, tensorflow as tf\n"
            f"if {devices} > 1:\n"
            "    cpu = tf.config.list_physical_devices('CPU')[0]\n"
            "    tf.config.set_logical_device_configuration(\n"
            f"        cpu, [tf.config.LogicalDeviceConfiguration()] * {devices})\n"
            "from pddm_tf import cli\n"
            "sys.argv = ['pddm-tf', 'train'] + sys.argv[1:]\n"
            "cli.run()\n")
    return [sys.executable, "-c", code, *args]


def _finish(processes):
    """Waits for every process (bounded), kills the rest, returns their (returncode, output)."""
    deadline = time.monotonic() + _TIMEOUT
    results = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((process.returncode, out))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


# --------------------------------------------------------------------------- multi-worker


@pytest.mark.slow
def test_two_worker_processes_match_one_process_with_two_devices(tmp_path):
    """Two MultiWorkerMirroredStrategy workers (one CPU each, TF_CONFIG from --worker_hosts) against
    MirroredStrategy over two logical CPUs in one process, same global batch of 8: same weights after
    4 steps, same held-out metrics (the evaluation embeds in shards over both workers), and only the
    chief writes."""
    common = TRAIN_FLAGS + ["--epochs=2", "--steps_per_epoch=2"]
    hosts = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    workers = [subprocess.Popen(
        _cli([*common, "--strategy=multi_worker", f"--worker_hosts={hosts}", f"--task_index={i}",
              f"--backup_dir={tmp_path / 'backup'}", f"--save_model={tmp_path / 'multi.keras'}",
              f"--json={tmp_path / 'multi.json'}", f"--export_dir={tmp_path / 'export'}"]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()) for i in range(2)]
    reference = subprocess.Popen(
        _cli([*common, "--strategy=mirrored", f"--save_model={tmp_path / 'one.keras'}",
              f"--json={tmp_path / 'one.json'}",
              f"--backup_dir={tmp_path / 'backup_one'}"], devices=2),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    results = _finish([*workers, reference])
    for code, out in results:
        assert code == 0, out[-3000:]
    assert "2 replicas on 2 worker(s)" in results[0][1]
    # Bitwise equal on this machine; the bound allows another all-reduce order (ring vs local sum).
    for multi, one in zip(_weights(tmp_path / "multi.keras"), _weights(tmp_path / "one.keras")):
        np.testing.assert_allclose(multi, one, rtol=1e-5, atol=1e-6)
    multi_metrics = json.loads((tmp_path / "multi.json").read_text())
    one_metrics = json.loads((tmp_path / "one.json").read_text())
    assert multi_metrics.keys() == one_metrics.keys()
    for name in one_metrics:
        assert multi_metrics[name] == pytest.approx(one_metrics[name], abs=1e-6), name
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["1"]  # one version: the chief's
    assert not (tmp_path / "backup").exists()  # deleted by the chief when training completed
    assert "held-out retrieval" not in results[1][1]  # the other worker logs nothing


# --------------------------------------------------------------------------- kill and resume


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(tmp_path):
    """`pddm-tf train` killed with SIGKILL after its first backup (during epoch 1 or 2 of 3) and run
    again resumes from that backup and ends with the weights of a run that was never interrupted."""
    common = TRAIN_FLAGS + ["--epochs=3", "--steps_per_epoch=10"]
    whole = subprocess.Popen(_cli([*common, f"--save_model={tmp_path / 'whole.keras'}",
                                   f"--backup_dir={tmp_path / 'backup_whole'}"]),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    backup = tmp_path / "backup"
    resumable = _cli([*common, f"--save_model={tmp_path / 'resumed.keras'}", f"--backup_dir={backup}"])
    victim = subprocess.Popen(resumable, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.monotonic() + _TIMEOUT
        # The first backup is written when epoch 1 begins: kill the process during the epoch after it.
        while not (backup / "latest").exists():
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
    (code, out), (whole_code, whole_out) = _finish([
        subprocess.Popen(resumable, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()), whole])
    assert code == 0 and whole_code == 0, (out[-3000:], whole_out[-3000:])
    assert f"resumed from {backup / interrupted_at}" in out
    # Measured bitwise equal; the bound only admits float noise.
    for resumed, uninterrupted in zip(_weights(tmp_path / "resumed.keras"), _weights(tmp_path / "whole.keras")):
        np.testing.assert_allclose(resumed, uninterrupted, rtol=0, atol=1e-6)




def _method_run(method, files, backup_dir=None, interrupt=None, model=None):
    if model is None:
        keras.utils.set_random_seed(0)
        model = methods.build_model(method, backbones.small_convnet(SIZE, 1, width=8), 16, **methods.method_options(
            method, num_classes=files.num_classes, num_learners=2))
        model.build((None, SIZE, SIZE, 1))
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    dataset, callbacks = methods.training_pipeline(model, files, 4, 2, SIZE, 1, seed=1, steps_per_epoch=3,
                                                   recluster_every=1, conquer_epochs=1, backup_dir=backup_dir)
    fit_interrupted(model, dataset, callbacks, interrupt)
    return model, callbacks


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hdml_triplet", "dc_margin"])
def test_every_state_of_a_method_is_restored(method, tmp_path):
    """HDML (running means, three optimisers, step-seeded synthesis) and Divide-and-Conquer over the
    margin loss (cluster assignment, re-clustering every epoch, conquer phase, the margin loss's
    sampler seed): interrupted mid-epoch 2 and resumed, they end exactly where an uninterrupted run
    does, with the same clustering."""
    files = data.load_dataset("omniglot").train
    reference, reference_callbacks = _method_run(method, files)
    interrupted, _ = _method_run(method, files, tmp_path / "backup", interrupt=2)
    assert (tmp_path / "backup" / "latest").read_text() == "backup-2"
    # The resumed run reuses the interrupted model object (its compiled step; a fresh process
    # is the CLI test's case) after scrambling everything the backup must bring back.
    rng = np.random.default_rng(5)
    interrupted.set_weights([rng.standard_normal(w.shape).astype(w.dtype) for w in interrupted.get_weights()])
    for variable in interrupted.optimizer.variables:
        variable.assign(np.full(variable.shape, 7, variable.dtype))
    resumed, callbacks = _method_run(method, files, tmp_path / "backup", model=interrupted)
    assert callbacks[0].restored_epoch == 2
    assert int(resumed.optimizer.iterations.numpy()) == 12
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    if method == "dc_margin":
        np.testing.assert_array_equal(callbacks[-1].assignment.numpy(), reference_callbacks[-1].assignment.numpy())
    assert not (tmp_path / "backup").exists()


def _tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    return model


def test_backup_is_atomic_and_checked(tmp_path):
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)
    model = _tiny_model()
    clusters = ClusterAssignment(5, 2)
    backup = BackupAndRestore(tmp_path, state={"clusters": clusters}, delete_checkpoint=False)
    clusters.assign(np.array([0, 1, 1, 0, -1]))
    model.fit(x, y, epochs=3, batch_size=4, callbacks=[backup], verbose=0)
    # Kept (delete_checkpoint=False), the completed state as the last backup, the older ones gone.
    assert (tmp_path / "latest").read_text() == "backup-3" and not (tmp_path / "backup-2").exists()
    assert backup_status(tmp_path) == {"epoch": 3, "step": 6, "steps_per_epoch": 2, "complete": True}
    # A later backup killed half-way: its folder exists, `latest` still names the previous one.
    (tmp_path / "backup-4").mkdir()
    (tmp_path / "backup-4" / "model.weights.h5").write_bytes(b"partial")
    fresh, restored_clusters = _tiny_model(), ClusterAssignment(5, 2)
    restore = BackupAndRestore(tmp_path, state={"clusters": restored_clusters}, delete_checkpoint=False)
    restore.set_model(fresh)
    restore.set_params({"steps": 2, "epochs": 3})
    restore.on_train_begin()
    assert restore.restored_epoch == 3 and int(fresh.optimizer.iterations.numpy()) == 6
    np.testing.assert_array_equal(restored_clusters.numpy(), [0, 1, 1, 0, -1])
    for restored, trained in zip(fresh.get_weights(), model.get_weights()):  # those fit ended with
        np.testing.assert_array_equal(restored, trained)
    assert fresh._initial_epoch == 3
    # Outside fit: the completed state restored as it is, with no epoch left for a fit to skip.
    again = _tiny_model()
    assert BackupAndRestore(tmp_path, state={"clusters": ClusterAssignment(5, 2)}).restore_completed(again) == 3
    for restored, trained in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(restored, trained)
    assert again._initial_epoch is None and int(again.optimizer.iterations.numpy()) == 6
    # A backup made between epochs (an interrupted fit) is not a completed one: nothing restored.
    interrupted = BackupAndRestore(tmp_path / "interrupted", delete_checkpoint=False)
    with pytest.raises(KeyboardInterrupt):
        _tiny_model().fit(x, y, epochs=3, batch_size=4, callbacks=[interrupted, Interrupt(1)], verbose=0)
    assert backup_status(tmp_path / "interrupted")["epoch"] == 1
    untouched = _tiny_model()
    initial = untouched.get_weights()
    assert BackupAndRestore(tmp_path / "interrupted").restore_completed(untouched) is None
    for kept, before in zip(untouched.get_weights(), initial):
        np.testing.assert_array_equal(kept, before)
    # Other settings than the backup's: a clear error rather than a silently different run.
    mismatched = BackupAndRestore(tmp_path, state={"clusters": ClusterAssignment(5, 2)})
    mismatched.set_model(_tiny_model())
    mismatched.set_params({"steps": 5, "epochs": 3})
    with pytest.raises(ValueError, match="2 steps per epoch but this fit runs 5"):
        mismatched.on_train_begin()
    (tmp_path / "latest").write_text("backup-9")
    with pytest.raises(ValueError, match="incomplete or missing"):
        restore.on_train_begin()


# --------------------------------------------------------------------------- input and embedding


def _take(dataset, n):
    return [[np.asarray(t) for t in batch] for batch in dataset.take(n)]


def test_sampler_starts_at_the_step_it_is_given_and_shards_cut_batches():
    files = data.load_dataset("omniglot").train
    full = _take(data.class_balanced_dataset(files, 4, 2, SIZE, 1, seed=3), 40)
    position = tf.Variable(0, dtype=tf.int64)
    started = data.class_balanced_dataset(files, 4, 2, SIZE, 1, seed=3, start_step=position)
    passes = data.steps_per_pass(files, 4)
    for step in (0, 5, passes - 1, passes + 2):  # inside the first pass, at and across its end
        position.assign(step)
        for got, want in zip(_take(started, 3), full[step:step + 3]):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    for index in range(2):
        shard = _take(data.class_balanced_dataset(files, 4, 2, SIZE, 1, seed=3, shard=(index, 2)), 3)
        for got, want in zip(shard, full):
            np.testing.assert_array_equal(got[0], want[0][4 * index:4 * index + 4])
            np.testing.assert_array_equal(got[1], want[1][4 * index:4 * index + 4])
    with pytest.raises(ValueError, match="shard"):
        data.class_balanced_dataset(files, 4, 2, SIZE, 1, shard=(0, 3))


def test_cluster_batches_start_at_the_step_and_end_with_the_epoch():
    files = data.load_dataset("omniglot").train
    assignment = ClusterAssignment(len(files), 2)
    assignment.assign(np.asarray(files.labels) % 2)
    full = _take(cluster_balanced_dataset(files, assignment, 4, 2, SIZE, 1, seed=2), 9)
    position = tf.Variable(3, dtype=tf.int64)
    epoch = cluster_balanced_dataset(files, assignment, 4, 2, SIZE, 1, seed=2, start_step=position, steps_per_epoch=3)
    assert int(epoch.cardinality()) == 3
    got = _take(epoch, 10)
    assert len(got) == 3
    for a, b in zip(got, full[3:6]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    shard = _take(cluster_balanced_dataset(files, assignment, 4, 2, SIZE, 1, seed=2, shard=(1, 2)), 2)
    for a, b in zip(shard, full):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y[4:])


def test_embed_files_over_two_replicas_matches_one_device(two_replicas):
    files = data.load_dataset("omniglot").test
    # 203 images: the last batch is padded.
    files = data.ImageFiles(files.paths[:203], files.labels[:203], files.class_names, files.rotations[:203])
    keras.utils.set_random_seed(0)
    single = backbones.small_convnet(SIZE, 1, width=8)
    with two_replicas.scope():
        mirrored = backbones.small_convnet(SIZE, 1, width=8)
    mirrored.set_weights(single.get_weights())
    images = np.stack([np.asarray(data.read_image(tf.constant(p), SIZE, 1, int(r)))
                       for p, r in zip(files.paths, files.rotations)])
    expected = single(images, training=False).numpy()
    got = distributed.embed_files(mirrored, files, SIZE, 1, batch_size=64)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(distributed.embed_files(single, files, SIZE, 1, batch_size=64), expected,
                               rtol=1e-5, atol=1e-6)


def test_cluster_configuration_and_chief():
    assert distributed.cluster_config(["a:1", "b:2"], 1) == {
        "cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="host:port"):
        distributed.cluster_config(["localhost"], 0)
    with pytest.raises(ValueError, match="task_index 2"):
        distributed.cluster_config(["a:1", "b:2"], 2)
    with pytest.raises(ValueError, match="unknown strategy"):
        distributed.make_strategy("parameter_server")

    def strategy(spec, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(spec), task_type=task_type, task_id=task_id)
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["a:1", "b:2", "c:3"]}
    assert distributed.worker_info(strategy(workers, "worker", 2)) == (2, 3)
    assert distributed.is_chief(strategy(workers, "worker", 0))
    assert not distributed.is_chief(strategy(workers, "worker", 1))
    with_chief = {"chief": ["a:1"], "worker": ["b:2"]}
    assert distributed.is_chief(strategy(with_chief, "chief", 0))
    assert distributed.worker_info(strategy(with_chief, "worker", 0)) == (1, 2)
    assert distributed.worker_info(tf.distribute.get_strategy()) == (0, 1)


def test_multi_worker_needs_a_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="set TF_CONFIG, or pass worker_hosts"):
        distributed.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distributed.make_strategy("multi_worker")


def test_embed_dataset_under_a_strategy_returns_one_row_per_image(two_replicas):
    """`evaluation.embed_dataset` with a model built under two replicas: one embedding per image,
    equal to the single-device model's (Keras' predict_on_batch would return two copies)."""
    from pddm_tf.evaluation import embed_dataset

    files = data.load_dataset("omniglot").test
    keras.utils.set_random_seed(0)
    single = backbones.small_convnet(SIZE, 1, width=8)
    with two_replicas.scope():
        mirrored = backbones.small_convnet(SIZE, 1, width=8)
    mirrored.set_weights(single.get_weights())
    dataset = data.evaluation_dataset(files, SIZE, 1, 100).take(2)
    got, labels = embed_dataset(mirrored, dataset)
    expected, expected_labels = embed_dataset(single, dataset)
    assert got.shape == (200, single.output_shape[-1])
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
