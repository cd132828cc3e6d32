"""Learning on real data: each baseline loss raises held-out Recall@1 on unseen Omniglot characters."""

import keras
import pytest
from omniglot_training import SIZE, train_and_measure

from pddm_tf import (
    ContrastiveLoss,
    LiftedStructuredLoss,
    MarginLoss,
    MetricLossModel,
    MultiSimilarityLoss,
    NPairLoss,
    TripletLoss,
    small_convnet,
)
from pddm_tf.miners import DistanceWeightedMiner

STEPS = 120

# name -> (loss with its default settings, required gain in held-out R@1 after STEPS steps).
# Untrained R@1 on the 121 held-out characters is 0.217. Measured after 120 steps (seeds fixed):
# contrastive 0.374, triplet semi-hard 0.425, batch-hard 0.432, lifted 0.327, npair 0.340,
# margin 0.369, multi-similarity 0.369. Each required gain is 45-60% of the measured one and at
# least 2.5x the seed noise (about 0.02), so it fails for a loss that does not learn. Lifted and
# N-pair (defaults as published) learn slowest at this budget, hence their lower bars.
CONFIGS = {
    "contrastive": (lambda: ContrastiveLoss(), 0.08),
    "triplet_semi_hard": (lambda: TripletLoss(miner="semi_hard"), 0.12),
    "triplet_batch_hard": (lambda: TripletLoss(miner="batch_hard"), 0.12),
    "lifted": (lambda: LiftedStructuredLoss(), 0.05),
    "npair": (lambda: NPairLoss(), 0.06),
    "margin": (lambda: MarginLoss(miner=DistanceWeightedMiner(seed=0)), 0.08),
    "multi_similarity": (lambda: MultiSimilarityLoss(), 0.08),
}


def _held_out_recall(loss: keras.losses.Loss) -> tuple[float, float]:
    keras.utils.set_random_seed(0)
    before, after, _ = train_and_measure(MetricLossModel(small_convnet(SIZE, 1), loss, 64), STEPS)
    return before, after


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
def test_baseline_training_raises_held_out_recall(config):
    make_loss, gain = CONFIGS[config]
    before, after = _held_out_recall(make_loss())
    print(f"{config}: R@1 {before:.3f} -> {after:.3f}")
    assert after >= before + gain, (before, after)
