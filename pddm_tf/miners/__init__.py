"""Miners: objects that choose index tuples in a batch, for any loss that takes `miner=`.

Every miner is called as `miner(labels [m], embeddings [m, d], distances=None) -> Tuples` and
registers itself under its `name`, so a loss's config (and `--loss_options`) can name it:

    "semi_hard"              SemiHardMiner             FaceNet's semi-hard negatives
    "batch_hard"             BatchHardMiner            farthest positive, closest negative per anchor
    "quadruplet"             QuadrupletMiner           PDDM's hard quadruplets (two rows each)
    "npair"                  NPairMiner                the N-pair loss's pairs and candidates
    "distance_weighted"      DistanceWeightedMiner     Wu et al.'s distance-weighted sampling
    "closest_beyond_cutoff"  ClosestBeyondCutoffMiner  the Divide-and-Conquer authors' sampler

The index arithmetic itself lives in `pddm_tf.mining`, as pure functions.
"""

from pddm_tf.miners._base import MINERS, Miner, Tuples, get_miner, serialize_miner
from pddm_tf.miners.batch_hard import BatchHardMiner
from pddm_tf.miners.closest_beyond_cutoff import ClosestBeyondCutoffMiner
from pddm_tf.miners.distance_weighted import DistanceWeightedMiner
from pddm_tf.miners.npair import NPairMiner, npair_tuples
from pddm_tf.miners.quadruplet import QuadrupletMiner, quadruplet_tuples
from pddm_tf.miners.semi_hard import SemiHardMiner

__all__ = [
    "MINERS",
    "BatchHardMiner",
    "ClosestBeyondCutoffMiner",
    "DistanceWeightedMiner",
    "Miner",
    "NPairMiner",
    "QuadrupletMiner",
    "SemiHardMiner",
    "Tuples",
    "get_miner",
    "npair_tuples",
    "quadruplet_tuples",
    "serialize_miner",
]
