"""Exact resumption of interrupted training: `BackupAndRestore`.

A run killed at any point (SIGKILL, a pre-empted worker) and started again with the same command
resumes from its last epoch-end backup and ends with the same weights as a run that was never
interrupted. That needs every piece of state that decides the next step:

* the model's weights, including non-trainable state: the PDDM and HDML running means, BatchNorm
  statistics, the HDML generator and classifier;
* every optimiser's slots and step counters: the compiled optimiser and HDML's generator and
  classifier optimisers (HDML seeds its synthetic negatives with a step counter);
* the sampler position: the training pipelines of `methods.training_pipeline` start each iterator
  at the optimiser's step (`SamplerPosition`), so restoring the optimiser restores the position in
  the sampling sequence (batch t depends only on the seed and t);
* extra state the caller registers, e.g. the Divide-and-Conquer `ClusterAssignment` (clusters,
  conquer flag);
* the epoch to resume at.

Backups are made between epochs only (when the next one begins, after every callback's epoch-end
work, such as a re-clustering). A Keras epoch cannot be entered half-way, and a backup taken
mid-epoch would have to replay part of an epoch; shorter epochs (`steps_per_epoch`) bound the
work a failure can lose instead.

Each backup is written to a fresh `backup-<n>` folder and synced to disk, and only then is the
`latest` file, which names it, replaced atomically (`pddm_tf.atomic`): a kill during a backup
leaves the previous one in force. Under a multi-worker strategy every worker performs the save (reading
on-read synchronised variables can take part in collectives), the chief into `backup_dir` and
the others into a temporary folder they delete; every worker restores from `backup_dir`, which
must therefore be on storage all workers see.

With `delete_checkpoint=False` the backup outlives `fit`: when `fit` completes, a last backup marked
complete is written, so a caller can keep the trained state until everything it derives from the
model (exports, metrics) is safely written, and, when that fails, restore the trained model with
`restore_completed` instead of training again (`pddm-tf train` does this).

Two runs backing up into one folder would overwrite each other's backups: `pddm_tf.training.train`
(and `pddm-tf train`) holds `atomic.lock_folders` on its backup and export folders for the whole
run, and a second run into either stops at once, naming the process that holds it
(`atomic.FolderInUseError`). A caller fitting with this callback in its own code takes the same
lock: `with atomic.lock_folders(backup_dir): model.fit(...)`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import keras
import tensorflow as tf

from pddm_tf import _compat, atomic
from pddm_tf.training.distributed import is_chief

_LATEST = "latest"
_WEIGHTS = "model.weights.h5"
_STATE = "state"
_METADATA = "metadata.json"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that backs up every stateful part of a pddm_tf run.

    Place it first in the callback list: it restores in `on_train_begin`, before the other
    callbacks look at the state (e.g. `DivideAndConquer` skips its initial clustering when the
    restored assignment holds one), and backs up in `on_epoch_begin`, after their epoch-end work.

    Args:
      backup_dir: folder of the backups; a run that finds a backup there resumes from it.
      state: extra trackable state, name -> `tf.Module` or `tf.Variable` (e.g.
        {"clusters": assignment}); `methods.training_pipeline` returns what its method needs.
      delete_checkpoint: delete `backup_dir` when `fit` completes (Keras' default), so the same
        command starts afresh next time; an interrupted run keeps it. False: keep it, and back up the
        completed state when `fit` ends (see `restore_completed`); deleting it is then the caller's.
    """

    def __init__(self, backup_dir: str | os.PathLike, state: dict[str, tf.Module | tf.Variable] | None = None,
                 delete_checkpoint: bool = True) -> None:
        super().__init__(os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=delete_checkpoint)
        self.state = dict(state or {})
        self.restored_epoch: int | None = None
        self._epochs_done: int | None = None

    # -- Keras hooks -----------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.restored_epoch = None
        self._epochs_done = None
        self._running = False
        folder = self._latest()
        if folder is not None:
            self._restore(folder)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Backed up here rather than at the previous epoch's end, so that everything the other
        # callbacks do at an epoch end (a Divide-and-Conquer re-clustering) is in the backup.
        if self._running:
            self._save(epoch)
        self._running = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs_done = epoch + 1  # backed up in on_epoch_begin (see there) or on_train_end

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass  # epoch-end backups only (see the module docstring)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # Keras' callback leaves the resume epoch set, so a later `fit` of the same model would skip epochs.
        _compat.set_initial_epoch(self.model, None)
        if self.delete_checkpoint:
            if self._chief():
                shutil.rmtree(self.backup_dir, ignore_errors=True)
        elif self._epochs_done is not None:
            self._save(self._epochs_done, complete=True)

    # -- after fit -------------------------------------------------------------------------------

    def restore_completed(self, model: keras.Model) -> int | None:
        """Restores the state of a completed `fit` from the latest backup into `model` (built and compiled).

        Returns the epochs that `fit` trained, or None when the latest backup is not that of a
        completed `fit` (none, or one made between epochs), in which case nothing is restored.
        """
        folder = self._latest()
        if folder is None or not json.loads((folder / _METADATA).read_text()).get("complete", False):
            return None
        self.set_model(model)
        with model.distribute_strategy.scope():
            self._restore(folder)
        _compat.set_initial_epoch(model, None)  # no fit follows that would consume it
        return self.restored_epoch

    # -- saving ----------------------------------------------------------------------------------

    def _chief(self) -> bool:
        return is_chief(self.model.distribute_strategy)

    def _save(self, epochs_done: int, complete: bool = False) -> None:
        """Backs up the state after `epochs_done` epochs (at the start of the next one, or, `complete`, at
        the end of `fit`)."""
        root = pathlib.Path(self.backup_dir)
        if self._chief():
            root.mkdir(parents=True, exist_ok=True)
            target = root / f"backup-{epochs_done}"
            shutil.rmtree(target, ignore_errors=True)  # a partial folder of an earlier, killed attempt
        else:
            target = pathlib.Path(tempfile.mkdtemp(prefix="pddm_tf_backup_"))
        target.mkdir(parents=True, exist_ok=True)
        failure = None
        try:
            # Built in memory, then written by Python: HDF5 on a full disk crashes the process at exit.
            (target / _WEIGHTS).write_bytes(_compat.weights_file_bytes(self.model))
            if self.state:
                tf.train.Checkpoint(**self.state).write(str(target / _STATE))
            metadata = {"epoch": epochs_done, "step": int(self.model.optimizer.iterations.numpy()),
                        "steps_per_epoch": (self.params or {}).get("steps"), "complete": complete}
            (target / _METADATA).write_text(json.dumps(metadata))
        except (OSError, RuntimeError, tf.errors.OpError) as error:  # a full disk, a lost mount, ...
            failure = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if failure is not None:
            shutil.rmtree(target, ignore_errors=True)
            raise OSError(f"cannot write the backup {target}: {failure}; the previous backup, if any, is kept "
                          f"in {root}") from None
        if not self._chief():
            shutil.rmtree(target, ignore_errors=True)
            return
        atomic.sync_tree(target)  # the backup is on disk before `latest` names it
        atomic.write_text(root / _LATEST, target.name)
        for old in root.glob("backup-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    # -- restoring -------------------------------------------------------------------------------

    def _latest(self) -> pathlib.Path | None:
        latest = pathlib.Path(self.backup_dir) / _LATEST
        if not latest.exists():
            return None
        folder = latest.parent / latest.read_text().strip()
        if not (folder / _METADATA).exists():
            raise ValueError(f"backup {latest} names {folder}, which is incomplete or missing; delete "
                             f"{self.backup_dir} to start afresh")
        return folder

    def _restore(self, folder: pathlib.Path) -> None:
        if not self.model.built:
            raise ValueError("BackupAndRestore needs a built model: call model.build(input_shape) before fit")
        metadata = json.loads((folder / _METADATA).read_text())
        steps = (self.params or {}).get("steps")
        if metadata["steps_per_epoch"] is not None and steps is not None and metadata["steps_per_epoch"] != steps:
            raise ValueError(f"the backup in {self.backup_dir} was made with {metadata['steps_per_epoch']} steps per "
                             f"epoch but this fit runs {steps}: resume with the same settings, or delete the backup")
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # The saved slots exist only once the optimiser is built (as Keras' own callback does).
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(folder / _WEIGHTS)
        if self.state:
            tf.train.Checkpoint(**self.state).read(str(folder / _STATE)).assert_existing_objects_matched()
        restored_step = int(optimizer.iterations.numpy()) if optimizer is not None else metadata["step"]
        if restored_step != metadata["step"]:
            raise ValueError(f"backup {folder} is inconsistent: step {restored_step} restored, {metadata['step']} "
                             "recorded")
        _compat.set_initial_epoch(self.model, metadata["epoch"])  # the mechanism of Keras' own BackupAndRestore
        self.restored_epoch = metadata["epoch"]
        print(f"resumed from {folder} at epoch {metadata['epoch']} (step {metadata['step']})", flush=True)


def backup_status(backup_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the latest backup in `backup_dir` holds: {"epoch": epochs trained, "step": optimiser step,
    "complete": whether `fit` had completed, ...}; None when there is no usable backup."""
    latest = pathlib.Path(backup_dir) / _LATEST
    try:
        return json.loads((latest.parent / latest.read_text().strip() / _METADATA).read_text())
    except (OSError, ValueError):
        return None


class SamplerPosition(keras.callbacks.Callback):
    """The `start_step` of the training pipelines: the optimiser's step when training and each epoch begin.

    `data.class_balanced_dataset` and `models.cluster_balanced_dataset` read `self.step` when
    an iterator starts, i.e. inside the first training step that asks it for a batch. The
    optimiser's own counter cannot serve: it is incremented by that same step, concurrently with
    the read. This variable changes only between steps, on the host, after those steps finished.
    """

    def __init__(self) -> None:
        super().__init__()
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="sampler_position")

    def _sync(self) -> None:
        optimizer = self.model.optimizer
        self.step.assign(int(optimizer.iterations.numpy()) if optimizer is not None else 0)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._sync()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._sync()

