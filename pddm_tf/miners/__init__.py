"""Miners: objects that choose index tuples in a batch, for any loss that takes `miner=`.

Every miner is called as `miner(labels [m], embeddings [m, d], distances=None) -> Tuples` and
registers itself under its `name`, so a loss's config (and `--loss_options`) can name it:

    semi_hard                SemiHardMiner             FaceNet's semi-hard negatives
    batch_hard               BatchHardMiner            farthest positive, closest negative per anchor
    quadruplet               QuadrupletMiner           PDDM's hard quadruplets (two rows each)
    npair                    NPairMiner                the N-pair loss's pairs and candidates
    distance_weighted        DistanceWeightedMiner     Wu et al.'s distance-weighted sampling
    closest_beyond_cutoff    ClosestBeyondCutoffMiner  the Divide-and-Conquer authors' sampler
    multi_similarity         MultiSimilarityMiner      the multi-similarity loss's pairs, for any pair loss
    pair_margin              PairMarginMiner           pairs that violate a pos/neg margin
    triplet_margin           TripletMarginMiner        all / hard / semihard / easy triplets by a margin

  mining.py    the index arithmetic of every miner and the label masks the losses share, as pure
               functions (no objects, no state)
  _base.py     `Tuples`, the `Miner` base class and the `MINERS` registry
"""

from pddm_tf.miners._base import MINERS, Miner, Tuples, get_miner, serialize_miner
from pddm_tf.miners.batch_hard import BatchHardMiner
from pddm_tf.miners.closest_beyond_cutoff import ClosestBeyondCutoffMiner
from pddm_tf.miners.distance_weighted import DistanceWeightedMiner
from pddm_tf.miners.mining import (
    MINING_MODES,
    Quadruplets,
    batch_hard_triplets,
    check_labels,
    closest_negatives_beyond_cutoff,
    distance_weighted_negatives,
    euclidean_scores,
    mine_quadruplets,
    npair_pairs,
    pair_masks,
    score_gap,
    semi_hard_negatives,
)
from pddm_tf.miners.multi_similarity import MultiSimilarityMiner
from pddm_tf.miners.npair import NPairMiner, npair_tuples
from pddm_tf.miners.pair_margin import PairMarginMiner
from pddm_tf.miners.quadruplet import QuadrupletMiner, quadruplet_tuples
from pddm_tf.miners.semi_hard import SemiHardMiner
from pddm_tf.miners.triplet_margin import TRIPLET_TYPES, TripletMarginMiner

__all__ = [
    "TRIPLET_TYPES",
    "TripletMarginMiner",
    "PairMarginMiner",
    "MultiSimilarityMiner",
    "MINERS",
    "MINING_MODES",
    "BatchHardMiner",
    "ClosestBeyondCutoffMiner",
    "DistanceWeightedMiner",
    "Miner",
    "NPairMiner",
    "QuadrupletMiner",
    "Quadruplets",
    "SemiHardMiner",
    "Tuples",
    "batch_hard_triplets",
    "check_labels",
    "closest_negatives_beyond_cutoff",
    "distance_weighted_negatives",
    "euclidean_scores",
    "get_miner",
    "mine_quadruplets",
    "npair_pairs",
    "npair_tuples",
    "pair_masks",
    "quadruplet_tuples",
    "score_gap",
    "semi_hard_negatives",
    "serialize_miner",
]
