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
