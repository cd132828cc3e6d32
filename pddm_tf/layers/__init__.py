"""Keras layers: the PDDM similarity unit, the L2-normalised (optionally sliced) embedding heads and
GeM pooling; each serializable (`keras.saving.register_keras_serializable(package="pddm_tf")`).

  pddm.py      PDDM
  heads.py     L2Normalize, EmbeddingHead, SlicedEmbeddingHead
  pooling.py   GeMPooling
"""

from pddm_tf.layers.heads import EmbeddingHead, L2Normalize, SlicedEmbeddingHead
from pddm_tf.layers.pddm import PDDM
from pddm_tf.layers.pooling import GeMPooling

__all__ = ["PDDM", "EmbeddingHead", "GeMPooling", "L2Normalize", "SlicedEmbeddingHead"]
