"""Shared by the learning tests: train on the embedded Omniglot split, measure held-out Recall@1."""

import functools

import keras
import tensorflow as tf

from pddm_tf import data, evaluation

SIZE = 32  # image side of every learning test


@functools.lru_cache(maxsize=1)
def split() -> data.DatasetSplit:
    """The default disjoint-class split: 121 training and 121 held-out characters."""
    return data.load_omniglot(test_fraction=0.5, seed=0)


@functools.lru_cache(maxsize=1)
def held_out() -> tf.data.Dataset:
    """The held-out characters' images in batches, decoded once per test process."""
    return data.evaluation_dataset(split().test, SIZE, 1).cache()


def held_out_recall_1(model: keras.Model) -> float:
    """Recall@1 of `model`'s embeddings over the held-out characters."""
    return evaluation.recall_at_k(*evaluation.embed_dataset(model, held_out()), ks=(1,))["recall@1"]


def train_and_measure(model: keras.Model, steps: int, steps_per_epoch: int | None = None):
    """Compiles `model` (Adam 1e-3), trains it `steps` steps on 16 x 4 batches (seed 0).

    Returns (held-out R@1 before, after, the History's dict). `steps_per_epoch=1` logs every step.
    """
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = held_out_recall_1(model)
    per_epoch = steps_per_epoch or steps
    train = data.class_balanced_dataset(split().train, 16, 4, SIZE, 1, seed=0)
    history = model.fit(train, epochs=steps // per_epoch, steps_per_epoch=per_epoch, verbose=0).history
    return before, held_out_recall_1(model), history
