"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen, Kornblith, Norouzi & Hinton,
ICML 2020), on labelled pairs as in pytorch-metric-learning's NTXentLoss (InfoNCE)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.losses._base import ElementLosses, PairLoss, finite_number, masked_logsumexp
from pddm_tf.miners import Miner
from pddm_tf.reducers import Reducer


@keras.saving.register_keras_serializable(package="pddm_tf")
class NTXentLoss(PairLoss):
    """NT-Xent on a similarity S (default: the cosine), one term per positive pair (a, p)
    (METHODS.md section 10):

        l_ap = -log( exp(S_ap / t) / (exp(S_ap / t) + sum_{n in N_a} exp(S_an / t)) )
             = softplus( logsumexp_{n in N_a} S_an / t - S_ap / t )

    The default reducer is `MeanReducer` over the positive pairs, as pytorch-metric-learning's. With
    two augmented views per image and one label per image this is SimCLR's loss; with class labels
    every same-class pair is a positive. With a `miner`, the pairs its tuples name.

    Args:
      temperature: t (pytorch-metric-learning's default 0.07; SimCLR used 0.1-0.5).
      distance: a similarity, default "cosine_similarity"; a distance is refused.
      reducer: default "mean". miner: None (all pairs) or a `pddm_tf.miners.Miner`.
    """

    default_distance = "cosine_similarity"
    default_reducer = "mean"
    distance_kinds = ("similarity",)

    def __init__(self, temperature: float = 0.07, distance: str | dict[str, Any] | Distance | None = None,
                 reducer: str | dict[str, Any] | Reducer | None = None,
                 miner: str | dict[str, Any] | Miner | None = None, name: str = "ntxent_loss", **kwargs: Any) -> None:
        super().__init__(distance=distance, reducer=reducer, miner=miner, name=name, **kwargs)
        self.temperature = finite_number("NTXentLoss", "temperature", temperature)
        if self.temperature <= 0:
            raise ValueError(f"NTXentLoss: temperature must be > 0, got {temperature}")

    def pair_terms(self, matrix: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> dict[str, ElementLosses]:
        logits = matrix / self.temperature
        # An anchor without negatives: the masked log-sum-exp is very negative, so softplus gives 0.
        negatives = masked_logsumexp(logits, negative, axis=1)[:, None]
        return {"positive": ElementLosses(tf.nn.softplus(negatives - logits), positive)}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}
