"""Keras layers: the PDDM similarity unit and the L2-normalised (optionally sliced) embedding heads."""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import EPSILON, l2_normalize


@keras.saving.register_keras_serializable(package="pddm_tf")
class PDDM(keras.layers.Layer):
    """Position-Dependent Deep Metric unit (METHODS.md section 1).

    For features f_i, f_j (L2-normalised inside the layer):
      u = |f_i - f_j|,  v = (f_i + f_j) / 2
      u' = ReLU(W_u u/||u|| + b_u),  v' = ReLU(W_v v/||v|| + b_v)
      u'' = u'/||u'||,  v'' = v'/||v'||
      c = ReLU(W_c [u''; v''] + b_c),  S_ij = w_s . c + b_s   (higher = more similar)

    Call modes:
      * `layer((f_a, f_b))` with f_a, f_b of shape [n, d] -> scores of the n given pairs, [n].
      * `layer(f)` with f of shape [m, d] -> all-pairs score matrix [m, m], symmetric.
        Only the pairs i <= j are scored (S is symmetric). The v branch is factorised
        (W_v v = (W_v f_i + W_v f_j)/2 and ||v||^2 = (||f_i||^2 + ||f_j||^2 + 2 f_i.f_j)/4), so no
        per-pair feature tensor is formed for it; only the u branch, which is non-linear in the
        pair, needs the [m (m + 1) / 2, d] differences.

    Every norm is floored (see `distances.EPSILON`), so identical features (u = 0) give finite
    scores and finite gradients.

    Args:
      units: width h of the u and v branches.
      combined_units: width of the joint layer c.
      normalize_inputs: divide u and v by their norms before W_u, W_v. The paper's reading is
        recalled, not confirmed (METHODS.md); default on. With it the score sees only the
        directions of u and v, not how far apart two unit features are: the pairs
        (cos t e1 + sin t e2, cos t e1 - sin t e2) have u/||u|| = e2 and v/||v|| = e1 for every
        t in (0, pi/2), so they all get the same score. The distance then reaches the loss only
        through the embedding term E_e. Measured (BENCHMARKS.md section 9): raw inputs did
        slightly better than normalised ones within the fold-to-fold spread; the default stays on.
      normalize_hidden: L2-normalise u' and v' before concatenation (confirmed in a second
        implementation); default on.
      dtype: the layer's dtype policy; default "float32" whatever the global policy, so that under
        mixed precision the scores that mining ranks and the hinge margins compare keep float32
        precision (the unit is small next to the backbone). Pass a policy to override.

    Example (the all-pairs matrix holds the scores of the pair mode):
      >>> import numpy as np
      >>> pddm = PDDM(units=8, combined_units=8)
      >>> f = tf.constant([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
      >>> scores = pddm(f)
      >>> scores.shape
      TensorShape([3, 3])
      >>> pair = pddm((f[:2], f[1:]))  # S_01 and S_12
      >>> np.allclose(pair, [scores[0, 1], scores[1, 2]], atol=1e-5)
      True
      >>> np.allclose(scores, tf.transpose(scores), atol=1e-5)
      True
    """

    def __init__(
        self,
        units: int = 128,
        combined_units: int = 128,
        normalize_inputs: bool = True,
        normalize_hidden: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        kernel_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if units < 1 or combined_units < 1:
            raise ValueError(f"PDDM units must be positive, got units={units}, combined_units={combined_units}")
        self.units = int(units)
        self.combined_units = int(combined_units)
        self.normalize_inputs = bool(normalize_inputs)
        self.normalize_hidden = bool(normalize_hidden)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape: Any) -> None:
        # Pair mode receives two shapes, all-pairs mode one; both carry the feature size last.
        paired = isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple))
        shape = input_shape[0] if paired else input_shape
        dim = shape[-1]
        if dim is None:
            raise ValueError("PDDM needs a known feature dimension (last axis)")

        def kernel(name: str, shape: tuple[int, ...]) -> keras.Variable:
            return self.add_weight(name=name, shape=shape, initializer=self.kernel_initializer,
                                   regularizer=self.kernel_regularizer)

        def bias(name: str, size: int) -> keras.Variable:
            return self.add_weight(name=name, shape=(size,), initializer="zeros")

        self.u_kernel = kernel("u_kernel", (dim, self.units))
        self.u_bias = bias("u_bias", self.units)
        self.v_kernel = kernel("v_kernel", (dim, self.units))
        self.v_bias = bias("v_bias", self.units)
        self.c_kernel = kernel("c_kernel", (2 * self.units, self.combined_units))
        self.c_bias = bias("c_bias", self.combined_units)
        self.s_kernel = kernel("s_kernel", (self.combined_units, 1))
        self.s_bias = bias("s_bias", 1)

    def call(self, inputs: Any) -> tf.Tensor:
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 2:
                raise ValueError(f"PDDM pair mode takes (f_a, f_b), got {len(inputs)} tensors")
            return self.pair_scores(inputs[0], inputs[1])
        return self.all_pair_scores(inputs)

    def pair_scores(self, f_a: tf.Tensor, f_b: tf.Tensor) -> tf.Tensor:
        """Scores S(f_a[n], f_b[n]) of n given pairs: [n, d], [n, d] -> [n]."""
        f_a, f_b = l2_normalize(f_a), l2_normalize(f_b)
        u = tf.abs(f_a - f_b)
        v = 0.5 * (f_a + f_b)
        if self.normalize_inputs:
            u, v = l2_normalize(u), l2_normalize(v)
        u_h = tf.nn.relu(tf.matmul(u, self.u_kernel) + self.u_bias)
        v_h = tf.nn.relu(tf.matmul(v, self.v_kernel) + self.v_bias)
        return self._head(u_h, v_h)

    def all_pair_scores(self, f: tf.Tensor) -> tf.Tensor:
        """Score matrix S[i, j] of every pair of one batch: [m, d] -> [m, m], symmetric.

        u and v are symmetric in the pair, so only the m (m + 1) / 2 pairs i <= j are scored and
        the lower triangle is their mirror image: half the work of scoring every ordered pair, and
        each score equals the pair mode's up to float rounding.
        """
        f = l2_normalize(f)
        m = tf.shape(f)[0]
        upper = tf.linalg.band_part(tf.ones(tf.stack([m, m]), tf.int8), 0, -1) > 0
        pairs = tf.cast(tf.where(upper), tf.int32)  # [P, 2], row-major
        i, j = pairs[:, 0], pairs[:, 1]
        # u branch: |f_i - f_j| is not linear in the pair, so it is formed for every pair ([P, d]).
        u = tf.abs(tf.gather(f, i) - tf.gather(f, j))
        if self.normalize_inputs:
            u = l2_normalize(u)
        u_h = tf.nn.relu(tf.matmul(u, self.u_kernel) + self.u_bias)
        # v branch: W_v (f_i + f_j)/2 from per-sample products; its norm from the Gram matrix.
        proj = tf.matmul(f, self.v_kernel)  # [m, h]
        v_lin = 0.5 * (tf.gather(proj, i) + tf.gather(proj, j))  # [P, h]
        if self.normalize_inputs:
            sq = tf.reduce_sum(tf.square(f), axis=1)
            gram = tf.matmul(f, f, transpose_b=True)
            v_sq_norm = 0.25 * (tf.gather(sq, i) + tf.gather(sq, j) + 2.0 * tf.gather_nd(gram, pairs))
            v_lin = v_lin / tf.sqrt(tf.maximum(v_sq_norm, EPSILON))[:, None]
        v_h = tf.nn.relu(v_lin + self.v_bias)
        upper_scores = tf.scatter_nd(pairs, self._head(u_h, v_h), tf.stack([m, m]))
        return tf.where(upper, upper_scores, tf.transpose(upper_scores))

    def _head(self, u_h: tf.Tensor, v_h: tf.Tensor) -> tf.Tensor:
        """Shared top of both modes: [..., h], [..., h] -> scores [...]."""
        if self.normalize_hidden:
            u_h, v_h = l2_normalize(u_h), l2_normalize(v_h)
        # W_c [u''; v''] split into its two halves: same product, no concatenated copy.
        c = tf.nn.relu(
            tf.tensordot(u_h, self.c_kernel[: self.units], axes=1)
            + tf.tensordot(v_h, self.c_kernel[self.units:], axes=1)
            + self.c_bias
        )
        return tf.squeeze(tf.tensordot(c, self.s_kernel, axes=1), axis=-1) + self.s_bias[0]

    def compute_output_shape(self, input_shape: Any) -> tuple:
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            return (input_shape[0][0],)
        return (input_shape[0], input_shape[0])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            units=self.units,
            combined_units=self.combined_units,
            normalize_inputs=self.normalize_inputs,
            normalize_hidden=self.normalize_hidden,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
        )
        return config


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
        return self.whole(self.project(inputs, training=training))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_slices": self.num_slices}


@keras.saving.register_keras_serializable(package="pddm_tf")
class GeMPooling(keras.layers.Layer):
    """Generalised-mean (GeM) global pooling with a learnable exponent p.

    For each sample and channel: y = (mean_{h,w} max(x, eps)^p)^(1/p); [n, h, w, c] -> [n, c]
    (channels_last; [n, c, h, w] -> [n, c] for channels_first). p = 1 is average pooling and
    p -> inf approaches max pooling. Features are clamped at eps first because x^p needs x > 0
    (GeM assumes non-negative, e.g. post-ReLU, features; negative values are treated as eps).

    p is one scalar weight shared by all channels. It is not constrained: keep it positive.

    Args:
      p: initial exponent (> 0), 3 by default as in Radenovic et al.
      eps: clamp floor (> 0).
      learn_p: whether p is trainable.
      data_format: "channels_last" or "channels_first"; default: Keras' image_data_format.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True, data_format: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if p <= 0 or eps <= 0:
            raise ValueError(f"GeMPooling needs p > 0 and eps > 0, got p={p}, eps={eps}")
        self.initial_p = float(p)
        self.eps = float(eps)
        self.learn_p = bool(learn_p)
        self.data_format = data_format or keras.backend.image_data_format()
        if self.data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"unknown data_format {self.data_format!r}")

    def build(self, input_shape: Any) -> None:
        if len(input_shape) != 4:
            raise ValueError(f"GeMPooling expects 4-D feature maps, got shape {input_shape}")
        self.p = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.initial_p),
                                 trainable=self.learn_p)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        axes = [1, 2] if self.data_format == "channels_last" else [2, 3]
        x = tf.maximum(inputs, tf.cast(self.eps, inputs.dtype))
        p = tf.cast(self.p, x.dtype)
        # Computed as m * mean((x/m)^p)^(1/p) with m the per-channel maximum: the terms stay in
        # (0, 1], so a large p can neither overflow x^p nor underflow the whole mean to 0. The value
        # is the same for every m > 0, hence holding m constant (stop_gradient) gives exact gradients.
        m = tf.stop_gradient(tf.reduce_max(x, axis=axes, keepdims=True))
        mean = tf.reduce_mean(tf.pow(x / m, p), axis=axes)
        return tf.squeeze(m, axis=axes) * tf.pow(mean, 1.0 / p)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        channels = input_shape[-1] if self.data_format == "channels_last" else input_shape[1]
        return (input_shape[0], channels)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(p=self.initial_p, eps=self.eps, learn_p=self.learn_p, data_format=self.data_format)
        return config
