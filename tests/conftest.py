"""Test-session set-up shared by every test module."""

import os

# Silence TensorFlow's C++ info logs; must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def _dispatches_only(config) -> bool:
    """Whether this process is pytest-xdist's controller, which hands the tests to its workers and runs none.

    It must not import TensorFlow: TensorFlow's start-up lines (and, on a machine without a GPU, "E0000 ...
    failed call to cuInit", which TF_CPP_MIN_LOG_LEVEL=2 and CUDA_VISIBLE_DEVICES="" do not silence) are
    captured by pytest while the conftest loads and printed after the test summary.
    """
    return (not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))
            and getattr(config.option, "dist", "no") != "no")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains on real data for a while (run in CI)")
    if not _dispatches_only(config):
        # Under pytest's capture, as when this ran at import: TensorFlow's start-up lines join the first
        # test's captured output instead of the terminal.
        capture = config.pluginmanager.getplugin("capturemanager")
        capture.resume_global_capture()
        try:
            _two_logical_cpus()
        finally:
            capture.suspend_global_capture()


def _two_logical_cpus() -> None:
    """Two logical CPU devices, so MirroredStrategy can be tested against one device on a CPU-only
    machine. This must happen before TensorFlow initialises its devices: at configuration, before the
    test modules are collected."""
    import tensorflow as tf  # here, not at the top: not in the xdist controller (see _dispatches_only)

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    except RuntimeError:  # devices already initialised by an earlier import: keep what exists
        pass


@pytest.fixture(scope="session")
def two_replicas():
    """One MirroredStrategy over the two logical CPUs, shared by every test of the session.

    TensorFlow keys collective instances per strategy object; separate collective strategies in
    one process can collide ("Shape mismatch in the collective instance"), one shared object cannot.
    """
    import tensorflow as tf  # here, not at the top: not in the xdist controller (see _dispatches_only)

    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPU devices (set up at the top of conftest.py)")
    return tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])


# Test files from the longest to the shortest (measured on 2 cores). CI runs the files in two
# processes (pytest-xdist, --dist loadfile), which take files in collection order: starting with
# the long ones keeps one process from finishing a long file alone at the end.
_LONGEST_FIRST = ("test_baseline_learning", "test_hdml", "test_divide_and_conquer", "test_distributed",
                  "test_learning", "test_serving", "test_cli", "test_cli_errors", "test_recipes", "test_backbones",
                  "test_benchmarks", "test_zero_shot", "test_knn_search", "test_models", "test_export")


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        return _LONGEST_FIRST.index(module) if module in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file, and among the short files, is kept
