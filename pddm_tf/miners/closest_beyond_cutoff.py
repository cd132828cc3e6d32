"""The Divide-and-Conquer authors' negative sampler (METHODS.md section 7)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from pddm_tf.miners._base import Miner, Tuples
from pddm_tf.miners.mining import closest_negatives_beyond_cutoff


class ClosestBeyondCutoffMiner(Miner):
    """Deterministic: anchor a takes its P_a closest negatives at distance >= `cutoff` and pairs them
    one to one with its P_a positives (`pddm_tf.miners.mining.closest_negatives_beyond_cutoff`). Rows in
    row-major (anchor, positive) order; groups = t.

    Args:
      cutoff: negatives closer than this only complete an anchor's list.

    Example (points 0, 1 | 1.5, 3 on a line, cutoff 0.6: anchor 1 skips 2, at 0.5):
      >>> tuples = ClosestBeyondCutoffMiner(0.6)(tf.constant([0, 0, 1, 1]), tf.constant([[0.0], [1.0], [1.5], [3.0]]))
      >>> tuples.rows().numpy().tolist()
      [[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]]
    """

    name = "closest_beyond_cutoff"

    def __init__(self, cutoff: float = 0.5) -> None:
        if cutoff < 0.0:
            raise ValueError(f"cutoff must be non-negative, got {cutoff}")
        self.cutoff = float(cutoff)

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        return Tuples.from_rows(closest_negatives_beyond_cutoff(labels, distances, self.cutoff, ref_labels))

    def get_config(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff}
