"""Every use of Keras and TensorFlow private internals in pddm_tf, in one place.

Keras 3 has no public hook for these jobs, so pddm_tf relies on private names of the Keras (3.15)
and TensorFlow (2.21) it was written against. Nothing else in the package touches a private
Keras/TF name: a new Keras release that changes one of them breaks only this module, and
tests/test_compat.py, which checks each assumption directly, says which. setup.py bounds Keras
below the next major version.

The assumptions:

* `keras.Model._symbolic_build(iterator=None, data_batch=None)` builds an unbuilt model from a
  traced call, then the compiled optimiser; `fit` reaches it through
  `_maybe_symbolic_build(iterator=None, data_batch=None)` (TensorFlow backend), which reads
  `_flatten_layers()`, `_compile_metrics` and `_compile_loss`. (`SymbolicBuildHooks`)
* `fit` starts at `model._initial_epoch` when it is set, the mechanism of Keras' own
  `BackupAndRestore`. (`set_initial_epoch`)
* `tf.__internal__.distribute.interim.maybe_merge_call(fn, strategy, *args)` runs `fn(strategy, *args)`
  in a cross-replica context from a replica context. (`maybe_merge_call`)
* `keras.src.saving.saving_lib.H5IOStore(io.BytesIO(), mode="w")` with
  `saving_lib._save_state(model, weights_store=..., assets_store=None, inner_path="",
  visited_saveables=set())` writes the same `.weights.h5` file `model.save_weights` writes, into a
  buffer (what Keras does inside a `.keras` archive). (`weights_file_bytes`)
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from keras.src.saving import saving_lib as _saving_lib


class SymbolicBuildHooks:
    """Mixin, listed before `keras.Model`, for the private build hooks of Keras' `fit`.

    * Under a strategy, Keras (3.15) peeks at a training batch and averages it over the replicas
      only to trace an unbuilt model; under MultiWorkerMirroredStrategy that average fails on
      (images, labels) tuples. A built model (without compiled metrics or loss) needs no batch:
      its optimiser is built in the strategy's scope, as Keras would, without reading one.
    * `_after_symbolic_build` runs once Keras has built the model and its optimiser that way:
      `fit` of an unbuilt model builds it from a traced call, where no other optimiser can be built.
    """

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        model: Any = self
        if model.built and all(layer.built for layer in model._flatten_layers()) \
                and model._compile_metrics is None and model._compile_loss is None:
            with model.distribute_strategy.scope():
                model._symbolic_build(data_batch=None)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)  # type: ignore[misc]

    def _symbolic_build(self, *args: Any, **kwargs: Any) -> None:
        super()._symbolic_build(*args, **kwargs)  # type: ignore[misc]
        self._after_symbolic_build()

    def _after_symbolic_build(self) -> None:
        """Called after Keras built the model and its compiled optimiser in `fit`. Default: nothing."""


def set_initial_epoch(model: keras.Model, epoch: int | None) -> None:
    """Makes the next `fit` of `model` start at `epoch` (None: at its `initial_epoch` argument)."""
    model._initial_epoch = epoch


def maybe_merge_call(fn: Callable[..., Any], strategy: tf.distribute.Strategy, *args: Any) -> Any:
    """Runs `fn(strategy, *args)` in a cross-replica context, entered from a replica context when
    needed (as Keras 2's optimisers applied their updates): mirrored variables can be assigned only there."""
    return tf.__internal__.distribute.interim.maybe_merge_call(fn, strategy, *args)


def weights_file_bytes(model: keras.Model) -> memoryview:
    """The bytes of the `.weights.h5` file `model.save_weights` would write; `model.load_weights` reads them.

    HDF5 writing straight to a full disk leaves a file handle whose close fails again when the
    interpreter exits, and the process dies with SIGSEGV (h5py's `ObjectID.__dealloc__`): building the
    file in memory keeps HDF5 away from the disk, and the caller's plain write fails with an OSError.
    """
    buffer = io.BytesIO()
    store = _saving_lib.H5IOStore(buffer, mode="w")
    try:
        _saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="",
                                visited_saveables=set())
    finally:
        store.close()
    return buffer.getbuffer()  # a view, not a second copy of the weights
