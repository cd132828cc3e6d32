"""Test-session set-up shared by every test module."""

import os

# Silence TensorFlow's C++ info logs; must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so MirroredStrategy can be tested against one device on a CPU-only
# machine. This must happen before TensorFlow initialises its devices, i.e. here, at collection.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
except RuntimeError:  # devices already initialised by an earlier import: keep what exists
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains on real data for a while (run in CI)")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def two_replicas():
    """One MirroredStrategy over the two logical CPUs, shared by every test of the session.

    TensorFlow keys collective instances per strategy object; separate collective strategies in
    one process can collide ("Shape mismatch in the collective instance"), one shared object cannot.
    """
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
