"""Embedding heads: the L2-normalised projection, and its K-slice form for Divide-and-Conquer."""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import l2_normalize


def _check_features(layer: keras.layers.Layer, shape: Any) -> None:
    """Refuses inputs other than [n, k] features: a Dense layer would project a feature map [n, h, w, k]
    position by position and the head would return [n, h, w, d] "embeddings" without a word."""
    rank = len(shape) if isinstance(shape, (tuple, list)) else tf.TensorShape(shape).rank
    if rank is not None and rank != 2:
        raise ValueError(f"{type(layer).__name__} {layer.name!r} takes features [n, k], got shape {tuple(shape)}: "
                         "pool a feature map first (e.g. keras.layers.GlobalAveragePooling2D)")


@keras.saving.register_keras_serializable(package="pddm_tf")
class L2Normalize(keras.layers.Layer):
    """x / ||x|| along the last axis, zero-safe. [..., d] -> [..., d]."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return l2_normalize(inputs)


@keras.saving.register_keras_serializable(package="pddm_tf")
class EmbeddingHead(keras.layers.Layer):
    """Dense projection to `embedding_dim` followed by L2 normalisation: [n, k] -> [n, d].

    Args:
      embedding_dim: d.
      dropout: dropout rate applied to the features before the projection (training only).
    """

    def __init__(self, embedding_dim: int = 64, dropout: float = 0.0, kernel_regularizer: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.embedding_dim = int(embedding_dim)
        self.dropout = float(dropout)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self._dropout = keras.layers.Dropout(self.dropout) if self.dropout > 0 else None
        self._projections = self._make_projections()

    def _make_projections(self) -> list[keras.layers.Dense]:
        """The Dense layers whose concatenated outputs form the projection (here one, to d)."""
        return [keras.layers.Dense(self.embedding_dim, kernel_regularizer=self.kernel_regularizer,
                                   dtype=self.dtype_policy, name="projection")]

    def build(self, input_shape: Any) -> None:
        _check_features(self, input_shape)
        for dense in self._projections:
            if not dense.built:
                dense.build(input_shape)

    def project(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """The raw (un-normalised) projection [n, k] -> [n, d], float32.

        Under a mixed-precision policy the Dense layers compute in float16 / bfloat16; their output is
        cast to float32 here, so that the normalisation, every loss, distance and PDDM score downstream
        is computed in float32 (a float16 norm of d squares overflows or loses the small distances that
        mining ranks).
        """
        x = self._dropout(inputs, training=training) if self._dropout is not None else inputs
        if len(self._projections) == 1:
            return tf.cast(self._projections[0](x), tf.float32)
        return tf.concat([tf.cast(dense(x), tf.float32) for dense in self._projections], axis=-1)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _check_features(self, inputs.shape)
        return l2_normalize(self.project(inputs, training=training))

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (*input_shape[:-1], self.embedding_dim)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, dropout=self.dropout,
                      kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer))
        return config


@keras.saving.register_keras_serializable(package="pddm_tf")
class SlicedEmbeddingHead(EmbeddingHead):
    """An `EmbeddingHead` whose d outputs are K disjoint learners (METHODS.md sections 4 and 7).

    Learner k owns output dims [k s, (k+1) s) (s = d / K), produced by its own Dense layer
    (`slice_layer(k)`, initialised on its own as the authors' `init_splitted` does), so each learner's
    parameters are separate variables that a per-learner optimiser can own. Learner k's embedding is
    its slice L2-normalised on its own (`slice`).

    `call` returns the authors' full embedding (METHODS.md section 7): every slice L2-normalised on
    its own, concatenated, and divided by sqrt(K),

        e = [s_0/||s_0||, ..., s_{K-1}/||s_{K-1}||] / sqrt(K),

    so each learner weighs the same whatever its raw projection's scale. The authors' vector has
    norm sqrt(K); dividing by sqrt(K) changes no ranking (every distance is scaled by 1/sqrt(K))
    and makes it unit-norm, which is what this library's losses (margins and the distance-weighted
    cutoffs are set for unit vectors), evaluation, export and search assume. It is also exactly the
    vector the authors' conquer phase trains: they L2-normalise the concatenation, i.e. divide it by
    sqrt(K). (A slice whose raw projection is exactly zero contributes zeros.) With K = 1 the layer
    is exactly an `EmbeddingHead`.

    Args:
      embedding_dim: d, divisible by `num_slices`.
      num_slices: K >= 1.
      dropout, kernel_regularizer: see `EmbeddingHead`.
    """

    def __init__(self, embedding_dim: int = 64, num_slices: int = 1, dropout: float = 0.0,
                 kernel_regularizer: Any = None, **kwargs: Any) -> None:
        if num_slices < 1:
            raise ValueError(f"num_slices must be positive, got {num_slices}")
        if embedding_dim % num_slices:
            raise ValueError(f"embedding_dim={embedding_dim} is not divisible by num_slices={num_slices}: "
                             "every learner needs a slice of the same size")
        # Set before the base constructor, which makes the projections from them.
        self.num_slices = int(num_slices)
        self.slice_dim = int(embedding_dim) // self.num_slices
        super().__init__(embedding_dim, dropout=dropout, kernel_regularizer=kernel_regularizer, **kwargs)

    def _make_projections(self) -> list[keras.layers.Dense]:
        if self.num_slices == 1:
            return super()._make_projections()
        return [keras.layers.Dense(self.slice_dim, kernel_regularizer=self.kernel_regularizer,
                                   dtype=self.dtype_policy, name=f"projection_{k}") for k in range(self.num_slices)]

    def slice_layer(self, index: int) -> keras.layers.Dense:
        """The Dense layer of learner `index` (with K = 1, the whole projection)."""
        self._check_index(index)
        return self._projections[0 if self.num_slices == 1 else index]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_slices:
            raise ValueError(f"slice index {index} out of range for {self.num_slices} slices")

    def slice(self, projection: tf.Tensor, index: int) -> tf.Tensor:
        """Learner `index`'s embedding: columns [index s, (index+1) s) of [n, d], L2-normalised: [n, s]."""
        self._check_index(index)
        return l2_normalize(projection[:, index * self.slice_dim:(index + 1) * self.slice_dim])

    def whole(self, projection: tf.Tensor) -> tf.Tensor:
        """The full embedding of a raw projection [n, d] -> [n, d]: slices normalised on their own,
        concatenated, / sqrt(K) (see the class docstring)."""
        if self.num_slices == 1:
            return l2_normalize(projection)
        parts = tf.reshape(projection, [-1, self.num_slices, self.slice_dim])
        scale = tf.cast(1.0 / math.sqrt(self.num_slices), projection.dtype)
        return tf.reshape(l2_normalize(parts) * scale, [-1, self.embedding_dim])

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _check_features(self, inputs.shape)
        return self.whole(self.project(inputs, training=training))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_slices": self.num_slices}
