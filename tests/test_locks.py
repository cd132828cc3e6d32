"""Folder locks (`pddm_tf.atomic.folder_lock`) and the staging folders a killed export leaves behind."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from pddm_tf import atomic
from pddm_tf.training import TrainConfig, train
from pddm_tf.training.run import _locked_folders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Holds the lock of argv[1] (or, with argv[2] == "stage", stages version 1 of it) until killed.
_HOLDER = textwrap.dedent("""
    import sys, time
    from pddm_tf import atomic
    if len(sys.argv) > 2:
        with atomic.replacing_version(sys.argv[1] + "/1") as staging:
            staging.mkdir()
            (staging / "saved_model.pb").write_bytes(b"half")
            print("ready", flush=True)
            time.sleep(300)
    with atomic.folder_lock(sys.argv[1], "a test holder"):
        print("ready", flush=True)
        time.sleep(300)
""")


def _hold(folder, *extra):
    """A process (no TensorFlow: starts in a fraction of a second) that holds `folder`'s lock."""
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), *extra], stdout=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert process.stdout.readline().strip() == "ready"
    return process


def _kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_a_held_folder_is_refused_naming_its_holder(tmp_path):
    holder = _hold(tmp_path / "out")
    try:
        with pytest.raises(atomic.FolderInUseError) as caught:
            with atomic.folder_lock(tmp_path / "out", "export"):
                pass
        message = str(caught.value)
        assert f"process {holder.pid} on {socket.gethostname()}" in message
        assert "a test holder" in message and str(tmp_path / "out") in message
        assert "\n" not in message
        assert isinstance(caught.value, OSError)  # the CLI's one-line errors
    finally:
        _kill(holder)
    # The kernel released the dead process's lock: the next run takes the folder over.
    with atomic.folder_lock(tmp_path / "out", "export") as lock:
        assert f'"pid": {os.getpid()}' in lock.read_text()
        assert lock == tmp_path / f".out{atomic.LOCK_SUFFIX}" and not (tmp_path / "out").exists()  # beside it
    assert not lock.exists()  # removed on release


def test_a_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with atomic.folder_lock(tmp_path, "outer"):
        with atomic.folder_lock(tmp_path, "inner"):
            pass
        assert atomic.held_by_this_process(tmp_path)
    assert not atomic.held_by_this_process(tmp_path)


def test_a_killed_export_leaves_staging_that_the_next_one_removes(tmp_path):
    root = tmp_path / "serving"
    writer = _hold(root, "stage")
    _kill(writer)  # kill -9 in the middle of writing version 1
    leftovers = [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".1.")
    # Not ours: another program's hidden folders and files, even when named alike.
    for name in (".1.notahexname.tmp", ".notes.0123456789ab.tmp", ".1.0123456789ab.tmp.keep"):
        (root / name).mkdir()
    (root / ".2.0123456789ab.tmp").write_text("a file, not a staging folder")
    with atomic.replacing_version(root / "1") as staging:
        staging.mkdir()
        (staging / "saved_model.pb").write_bytes(b"whole")
    assert sorted(p.name for p in root.iterdir()) == sorted([
        "1", ".1.notahexname.tmp", ".notes.0123456789ab.tmp", ".1.0123456789ab.tmp.keep", ".2.0123456789ab.tmp"])
    assert (root / "1" / "saved_model.pb").read_bytes() == b"whole"


def test_staging_of_a_live_export_is_not_removed(tmp_path):
    root = tmp_path / "serving"
    writer = _hold(root, "stage")
    try:
        with pytest.raises(atomic.FolderInUseError, match=f"process {writer.pid}"):
            with atomic.replacing_version(root / "2"):
                pass
        assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")]  # still there
    finally:
        _kill(writer)


@pytest.mark.parametrize("field", ["export_dir", "backup_dir"])
def test_a_second_training_run_into_a_held_folder_stops_naming_the_first(tmp_path, field):
    holder = _hold(tmp_path / field)
    try:
        with pytest.raises(atomic.FolderInUseError, match=f"process {holder.pid} on {socket.gethostname()}"):
            train(TrainConfig.from_flags(epochs=1, **{field: str(tmp_path / field)}))
    finally:
        _kill(holder)
    # Nothing written: neither folder made, only the killed holder's lock file left beside the held one.
    assert [p.name for p in tmp_path.iterdir()] == [f".{field}{atomic.LOCK_SUFFIX}"]


def test_a_training_run_holds_its_folders_only_while_it_runs(tmp_path):
    config = TrainConfig.from_flags(epochs=1, backup_dir=str(tmp_path / "backup"),
                                    export_dir=str(tmp_path / "serving"))
    assert _locked_folders(config) == [str(tmp_path / "backup"), str(tmp_path / "serving")]
    # Worker 1 of a multi-worker run shares worker 0's backup folder: only worker 0 locks it.
    worker = config.with_flags(strategy="multi_worker", task_index=1, worker_hosts=("a:1", "b:2"))
    assert _locked_folders(worker) == []
    assert _locked_folders(config.with_flags(backup=False, export_dir=None)) == []
