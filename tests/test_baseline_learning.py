"""Learning on real data: each baseline loss raises held-out Recall@1 on unseen Omniglot characters."""

import functools

import keras
import pytest

from pddm_tf import (ContrastiveLoss, LiftedStructuredLoss, MarginLoss, MetricLossModel, MultiSimilarityLoss,
                     NPairLoss, TripletLoss, data, evaluation, small_convnet)

SIZE, STEPS = 32, 120

# name -> (loss with its default settings, required gain in held-out R@1 after STEPS steps).
# Untrained R@1 on the 121 held-out characters is 0.217. Measured after 120 steps (seeds fixed):
# contrastive 0.374, triplet semi-hard 0.425, batch-hard 0.432, lifted 0.327, npair 0.340,
# margin 0.369, multi-similarity 0.369. Each required gain is 45-60% of the measured one and at
# least 2.5x the seed noise (about 0.02), so it fails for a loss that does not learn. Lifted and
# N-pair (defaults as published) learn slowest at this budget, hence their lower bars.
CONFIGS = {
    "contrastive": (lambda: ContrastiveLoss(), 0.08),
    "triplet_semi_hard": (lambda: TripletLoss(mining="semi_hard"), 0.12),
    "triplet_batch_hard": (lambda: TripletLoss(mining="batch_hard"), 0.12),
    "lifted": (lambda: LiftedStructuredLoss(), 0.05),
    "npair": (lambda: NPairLoss(), 0.06),
    "margin": (lambda: MarginLoss(seed=0), 0.08),
    "multi_similarity": (lambda: MultiSimilarityLoss(), 0.08),
}


@functools.lru_cache(maxsize=1)
def _split() -> data.DatasetSplit:
    return data.load_omniglot(test_fraction=0.5, seed=0)


def _held_out_recall(loss: keras.losses.Loss) -> tuple[float, float]:
    keras.utils.set_random_seed(0)
    split = _split()
    model = MetricLossModel(small_convnet(SIZE, 1), loss, 64)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    held_out = data.evaluation_dataset(split.test, SIZE, 1)

    def recall_at_1() -> float:
        return evaluation.recall_at_k(*evaluation.embed_dataset(model, held_out), ks=(1,))["recall@1"]

    before = recall_at_1()
    train = data.class_balanced_dataset(split.train, 16, 4, SIZE, 1, seed=0)
    model.fit(train, epochs=1, steps_per_epoch=STEPS, verbose=0)
    return before, recall_at_1()


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
def test_baseline_training_raises_held_out_recall(config):
    make_loss, gain = CONFIGS[config]
    before, after = _held_out_recall(make_loss())
    print(f"{config}: R@1 {before:.3f} -> {after:.3f}")
    assert after >= before + gain, (before, after)
