"""pddm_tf.atomic: the one atomic-write helper (content, mode 0666 less the umask, no leftovers, failures)."""

import json
import os
import stat

import numpy as np
import pytest

from pddm_tf import atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_json_is_written_whole_with_the_mode_open_would_give(tmp_path, umask_022):
    payload = {"recall@1": 0.5, "nested": [1, 2, {"k": "v"}]}
    path = atomic.write_json(tmp_path / "sub" / "m.json", payload, indent=2, sort_keys=True)
    assert json.loads(path.read_text()) == payload
    assert path.read_text() == json.dumps(payload, indent=2, sort_keys=True)
    with open(tmp_path / "plain", "w"):  # what a plain open() creates under this umask
        pass
    assert _mode(path) == _mode(tmp_path / "plain") == 0o644
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.json"]  # no temporary file left


def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic.write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.txt") == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    atomic.write_json(path, {"old": 1})
    real_replace = os.replace

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_json(path, {"new": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(TypeError):  # fails while serialising, before anything is written
        atomic.write_json(path, {"new": object()})
    with pytest.raises(RuntimeError, match="writer died"), atomic.replacing(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_replacing_gives_a_named_file_for_path_writers(tmp_path):
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b": np.array(["x", "y"])}
    with atomic.replacing(tmp_path / "e.npz", suffix=".npz") as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        np.savez(tmp, **arrays)
    with np.load(tmp_path / "e.npz") as saved:
        for key, value in arrays.items():
            np.testing.assert_array_equal(saved[key], value)
    assert os.listdir(tmp_path) == ["e.npz"]


def test_replacing_directory_is_all_or_nothing(tmp_path):
    target = tmp_path / "1"
    with pytest.raises(OSError, match="killed"), atomic.replacing_directory(target) as staging:
        staging.mkdir()
        (staging / "saved_model.pb").write_bytes(b"partial")
        raise OSError("killed")
    assert os.listdir(tmp_path) == []
    with atomic.replacing_directory(target) as staging:
        (staging / "variables").mkdir(parents=True)
        (staging / "variables" / "v").write_bytes(b"weights")
    assert (target / "variables" / "v").read_bytes() == b"weights"
    assert os.listdir(tmp_path) == ["1"]


def test_cli_json_file_is_0644_under_umask_022(tmp_path, umask_022):
    from pddm_tf.training import run  # what `pddm-tf train` / `evaluate --json` write the metrics with

    run.report({"recall@1": 0.25}, "held-out", str(tmp_path / "metrics.json"))
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"recall@1": 0.25}
    assert _mode(tmp_path / "metrics.json") == 0o644
    assert os.listdir(tmp_path) == ["metrics.json"]
