"""PDDM's hard quadruplets (METHODS.md section 2), as two rows of triplets each."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from pddm_tf.miners._base import Miner, Tuples
from pddm_tf.miners.mining import MINING_MODES, Quadruplets, mine_quadruplets


def quadruplet_tuples(quadruplets: Quadruplets) -> Tuples:
    """The `Tuples` layout of mined quadruplets [q, 4] (i, j, k, l): rows (i, j, k) then (j, i, l)
    (`Tuples.from_quadruplets`)."""
    return Tuples.from_quadruplets(quadruplets)


class QuadrupletMiner(Miner):
    """Hard quadruplets (i, j, k, l) of `pddm_tf.miners.mining.mine_quadruplets`, ranked by -distances
    (pass PDDM scores S as distances = -S to mine as the paper does). Returned as 2q rows: row r
    is (i, j, k), row q + r is (j, i, l); groups = q.

    Args:
      mode: "per_pair" (one quadruplet per positive pair i < j) or "hardest" (one per batch).

    Example (points 0, 1 | 1.5, 3 on a line: quadruplets (0, 1, 2, 2) and (2, 3, 1, 1)):
      >>> tuples = QuadrupletMiner()(tf.constant([0, 0, 1, 1]), tf.constant([[0.0], [1.0], [1.5], [3.0]]))
      >>> tuples.rows().numpy().tolist(), int(tuples.groups)
      ([[0, 1, 2], [2, 3, 1], [1, 0, 2], [3, 2, 1]], 2)
    """

    name = "quadruplet"
    # Quadruplets pair two anchors of one batch: (j, i, l) reads i as j's positive.
    supports_ref = False
    # One quadruplet per eligible positive pair: a data-dependent count (tf.where), which XLA rejects.
    supports_jit = False

    def __init__(self, mode: str = "per_pair") -> None:
        if mode not in MINING_MODES:
            raise ValueError(f"unknown mining mode {mode!r}; expected one of {MINING_MODES}")
        self.mode = mode

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        return quadruplet_tuples(mine_quadruplets(labels, -distances, self.mode))

    def get_config(self) -> dict[str, Any]:
        return {"mode": self.mode}
