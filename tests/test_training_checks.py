"""`LearningCheck`: an epoch that learned nothing is reported, or with strict=True stops training."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import small_convnet
from pddm_tf.methods import build_model
from pddm_tf.training.checks import LearningCheck, NothingLearnedError


def test_the_epoch_means_decide():
    check = LearningCheck()
    check.on_epoch_end(0, {"loss": 0.3, "valid_fraction": 0.25})
    check.on_epoch_end(1, {"loss": 1e-12, "valid_fraction": np.array([0.5], np.float32)})  # tiny is not zero
    assert check.warnings == []
    check.on_epoch_end(2, {"loss": 0.0})
    check.on_epoch_end(3, {"loss": 0.7, "valid_fraction": np.zeros([1], np.float32)})  # a multi-worker [1] log
    assert check.warnings == [
        "epoch 3 learned nothing: the loss was exactly 0 at every step; check batch_per_class, batch_classes and "
        "that the training classes have two or more distinct images",
        "epoch 4 learned nothing: valid_fraction stayed 0 (no batch held a valid tuple); check batch_per_class, "
        "batch_classes and that the training classes have two or more distinct images",
    ]
    with pytest.raises(NothingLearnedError, match="epoch 5 learned nothing"):
        LearningCheck(strict=True).on_epoch_end(4, {"loss": 0.0})


def test_a_batch_without_positive_pairs_is_reported_during_fit(caplog):
    keras.utils.set_random_seed(0)
    model = build_model("pddm_quadruplet", small_convnet(16, 1, width=4), 8)
    model.build((None, 16, 16, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = np.random.default_rng(0).random((4, 16, 16, 1), dtype=np.float32)

    def fit(labels, check):
        batches = tf.data.Dataset.from_tensors((images, np.asarray(labels, np.int32))).repeat()
        model.fit(batches, epochs=2, steps_per_epoch=1, callbacks=[check], verbose=0)
        return check

    # Four classes of one image each: no positive pair, so no quadruplet can be mined.
    with caplog.at_level(logging.WARNING, logger="pddm_tf.training.checks"):
        alone = fit([0, 1, 2, 3], LearningCheck())
    assert [w.split(":")[0] for w in alone.warnings] == ["epoch 1 learned nothing", "epoch 2 learned nothing"]
    assert all("valid_fraction stayed 0" in w for w in alone.warnings)
    assert [r.getMessage() for r in caplog.records if r.name == "pddm_tf.training.checks"] == alone.warnings
    # Two classes of two images: every positive pair has negatives.
    assert fit([0, 0, 1, 1], LearningCheck()).warnings == []
    with pytest.raises(NothingLearnedError, match="epoch 1 learned nothing: valid_fraction stayed 0"):
        fit([0, 1, 2, 3], LearningCheck(strict=True))
