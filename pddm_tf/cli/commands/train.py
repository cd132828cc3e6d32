"""`pddm-tf train`: train on a dataset, print held-out retrieval metrics, export (`pddm_tf.training.train`).

`pddm-tf train --epochs=0` evaluates and exports the untrained model: the baseline to compare with.
An interrupted or failed `train` is carried on by running the same command again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pddm_tf.cli import settings
from pddm_tf.cli.command import Command, register_command


def check(values: Mapping[str, Any]) -> None:
    """Everything `TrainConfig.check` refuses (types, bounds, the method's flags and options, paths)."""
    settings.train_config(values).check()


def run() -> dict[str, float]:
    settings.apply_recipe(announce=False)  # main applied and announced it; a direct call may not have
    config = settings.train_config()
    config.check()
    # TensorFlow is imported at the CLI edge only: `pddm-tf --help` and refused flags must not pay for it.
    from pddm_tf.training import run as training_run

    return training_run.train(config)


COMMAND = register_command(Command(name="train", summary="train on a dataset, print held-out retrieval metrics, "
                                   "export", run=run, check=check, trains=True))
