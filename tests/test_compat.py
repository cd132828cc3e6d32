"""pddm_tf._compat: each Keras/TensorFlow private internal it relies on still does what it assumes.

A failure here after a Keras or TensorFlow upgrade names the assumption that broke (see the
module docstring of pddm_tf._compat); the fix belongs in _compat.py only.
"""

import ast
import inspect
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import pddm_tf
from pddm_tf import _compat

_PACKAGE = pathlib.Path(pddm_tf.__file__).parent


class Probe(_compat.SymbolicBuildHooks, keras.Model):
    """A one-layer model with its own train step (as EmbeddingModel: no compiled loss or metrics)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)
        self.hook_calls = 0
        self.optimizer_built_at_hook = None
        self.epochs_run = []

    def call(self, x):
        return self.dense(x)

    def _after_symbolic_build(self):
        self.hook_calls += 1
        self.optimizer_built_at_hook = self.optimizer is not None and self.optimizer.built

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x) - y))
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss}


class _EpochLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")


def test_keras_build_hooks_keep_their_signatures():
    for name in ("_symbolic_build", "_maybe_symbolic_build"):
        assert hasattr(keras.Model, name), f"keras.Model no longer has {name}"
        params = list(inspect.signature(getattr(keras.Model, name)).parameters)
        assert params[:3] == ["self", "iterator", "data_batch"], f"keras.Model.{name}{params} changed"
    model = Probe()
    model.compile(optimizer="adam")
    # Read by SymbolicBuildHooks._maybe_symbolic_build: None when compile got no loss or metrics.
    assert model._compile_loss is None and model._compile_metrics is None
    assert callable(model._flatten_layers)


def test_fit_of_a_built_model_builds_its_optimiser_through_the_hook():
    x, y = _data()
    model = Probe()
    model(x)
    model.compile(optimizer=keras.optimizers.Adam(0.1))
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    # fit -> _maybe_symbolic_build (our shortcut) -> _symbolic_build -> optimiser built -> our hook.
    assert model.hook_calls == 1 and model.optimizer_built_at_hook
    assert int(model.optimizer.iterations.numpy()) == 1


def test_symbolic_build_of_an_unbuilt_model_builds_it_and_calls_the_hook():
    x, y = _data()
    model = Probe()
    model.compile(optimizer="adam")
    assert not model.dense.built
    model._symbolic_build(data_batch=(x, y))
    assert model.dense.built and model.dense.kernel.shape == (3, 2)
    assert model.hook_calls == 1 and model.optimizer_built_at_hook


def test_initial_epoch_makes_fit_resume_there():
    x, y = _data()
    model = Probe()
    model.compile(optimizer="adam")
    log = _EpochLog()
    _compat.set_initial_epoch(model, 2)
    model.fit(x, y, epochs=4, batch_size=4, verbose=0, callbacks=[log])
    assert log.epochs == [2, 3]
    _compat.set_initial_epoch(model, None)
    log.epochs.clear()
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[log])
    assert log.epochs == [0, 1]


def _assign_in_cross_replica_context(strategy, variable):
    contexts = []

    def update(strategy, value):
        contexts.append(tf.distribute.in_cross_replica_context())
        strategy.extended.update(variable, lambda v, t: v.assign(t), args=(value,), group=False)

    @tf.function
    def step():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            value = tf.cast(ctx.num_replicas_in_sync, tf.float32) * tf.ones([2])
            _compat.maybe_merge_call(update, tf.distribute.get_strategy(), value)
        strategy.run(replica_fn)

    step()
    return contexts


def test_maybe_merge_call_assigns_a_mirrored_variable_from_a_replica(two_replicas):
    with two_replicas.scope():
        variable = tf.Variable(tf.zeros([2]))
    # Entered once, from the replicas, into the cross-replica context (where mirrored variables can be assigned).
    assert _assign_in_cross_replica_context(two_replicas, variable) == [True]
    for value in two_replicas.experimental_local_results(variable):
        np.testing.assert_array_equal(value.numpy(), [2.0, 2.0])


def test_maybe_merge_call_under_the_default_strategy():
    variable = tf.Variable(tf.zeros([2]))
    assert len(_assign_in_cross_replica_context(tf.distribute.get_strategy(), variable)) == 1
    np.testing.assert_array_equal(variable.numpy(), [1.0, 1.0])


def _private_keras_names() -> set[str]:
    objects = [keras.Model(), keras.layers.Dense(1), keras.callbacks.BackupAndRestore("unused"),
               keras.losses.MeanSquaredError(), keras.metrics.Mean(), keras.optimizers.Adam()]
    names = set()
    for obj in objects:
        names |= {n for n in [*dir(obj), *vars(obj)] if n.startswith("_") and not n.startswith("__")}
    return names


def test_no_private_keras_or_tensorflow_name_outside_compat():
    private = _private_keras_names()
    found = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        source = path.read_text(encoding="utf-8")
        found += [f"{path.name}: {s}" for s in ("keras.src", "tensorflow.python", "tf.python", "__internal__")
                  if s in source]
        for node in ast.walk(ast.parse(source)):
            # Reading, setting or overriding a private attribute that Keras defines.
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "name", None) \
                if isinstance(node, ast.FunctionDef) else None
            if name in private:
                found.append(f"{path.name}:{node.lineno}: {name}")
    assert not found, f"private Keras/TF internals outside pddm_tf/_compat.py: {found}"


@pytest.mark.parametrize("name", ["_symbolic_build", "_maybe_symbolic_build", "_initial_epoch"])
def test_the_scan_sees_the_names_compat_uses(name):
    # Guards the test above: it must know the private names _compat.py relies on.
    assert name in _private_keras_names()


def test_weights_file_bytes_is_the_file_save_weights_writes(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
    model(np.ones((2, 3), "float32"), training=True)  # moves the BatchNorm statistics off their initial values
    (tmp_path / "memory.weights.h5").write_bytes(_compat.weights_file_bytes(model))
    model.save_weights(tmp_path / "keras.weights.h5")
    for name in ("memory", "keras"):
        fresh = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
        fresh.load_weights(tmp_path / f"{name}.weights.h5")
        for got, want in zip(fresh.get_weights(), model.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
