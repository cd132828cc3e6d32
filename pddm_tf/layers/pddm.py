"""The PDDM similarity unit (METHODS.md section 1), pair and all-pairs modes."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import EPSILON, l2_normalize, safe_norm


@keras.saving.register_keras_serializable(package="pddm_tf")
class PDDM(keras.layers.Layer):
    """Position-Dependent Deep Metric unit (METHODS.md section 1).

    For features f_i, f_j (L2-normalised inside the layer):
      u = |f_i - f_j|,  v = (f_i + f_j) / 2
      u' = ReLU(W_u u + b_u),  v' = ReLU(W_v v + b_v)      (u/||u||, v/||v|| with normalize_inputs)
      u'' = u'/||u'||,  v'' = v'/||v'||
      c = ReLU(W_c [u''; v''] + b_c),  S_ij = w_s . c + b_s - g ||f_i - f_j||   (higher = more similar)

    The last term, a Euclidean prior with a trainable weight g (initial value `distance_weight`,
    0 = no term), is this library's addition: it makes the unit rank pairs by distance from its
    first step, and the learned part w_s . c (its kernel w_s initialised small) adds the
    position-dependent correction as training goes. Why: u'' and v'' are unit vectors of ReLU
    outputs, and ReLU is positively homogeneous, so with the zero-initialised biases u'' forgets
    the scale of u; the learned part alone is nearly blind to the pair's distance at
    initialisation, with or without input normalisation. Measured by benchmarks/pddm_init.py (64
    held-out Omniglot images, 16 characters x 4, embedded by a fresh small_convnet and head; the
    Spearman correlation between the initial scores and minus the Euclidean distance over the
    2,016 pairs; mean [min, max] over 5 seeds): the recalled unit -0.01 [-0.17, +0.11] with raw or
    normalised inputs alike; with b_u = b_v = 0.1 +0.19 [-0.11, +0.59], = 1 +0.10 [-0.15, +0.46];
    the distance as one more input of the joint layer +0.01 [-0.14, +0.13]; this prior with a
    Glorot-initialised w_s +0.40 [+0.28, +0.49], with w_s at a tenth of that scale (the default)
    +0.97 [+0.96, +0.99].

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
      normalize_inputs: divide u and v by their norms before W_u, W_v: the paper's input reading as
        recalled, not confirmed (METHODS.md section 1); default off. With it the branches see only
        the directions of u and v, not how far apart two unit features are: the pairs
        (cos t e1 + sin t e2, cos t e1 - sin t e2) have u/||u|| = e2 and v/||v|| = e1 for every
        t in (0, pi/2), so the learned part gives them all the same score (distance-blind; only
        the prior term, when on, still sees the distance). Measured on the few-shot protocol
        (BENCHMARKS.md section 2): raw inputs learned better at the defaults' budget (+2.9 points at
        500 steps) and were level at the recipe's (3,000 steps).
      normalize_hidden: L2-normalise u' and v' before concatenation (confirmed in a second
        implementation); default on.
      distance_weight: initial weight g of the Euclidean prior -g ||f_i - f_j|| (trainable), >= 0;
        0 leaves it out: the unit as METHODS.md section 1 recalls it.
      score_initializer: initialiser of w_s; None (default) = `kernel_initializer` without the
        prior, and a Glorot-uniform at a tenth of its scale with it (so that the prior dominates
        the initial ranking).
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
        normalize_inputs: bool = False,
        normalize_hidden: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        kernel_regularizer: Any = None,
        distance_weight: float = 1.0,
        score_initializer: Any = None,
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
        if not distance_weight >= 0:
            raise ValueError(f"PDDM distance_weight must be >= 0, got {distance_weight}")
        self.distance_weight = float(distance_weight)
        if score_initializer is None and self.distance_weight > 0:
            # Glorot-uniform variance times 0.01: amplitudes a tenth of Glorot's (see the class docstring).
            score_initializer = keras.initializers.VarianceScaling(0.01, mode="fan_avg", distribution="uniform")
        self.score_initializer = (keras.initializers.get(score_initializer) if score_initializer is not None
                                  else self.kernel_initializer)

    def build(self, input_shape: Any) -> None:
        # Pair mode receives two shapes, all-pairs mode one; both carry the feature size last.
        paired = isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple))
        shape = input_shape[0] if paired else input_shape
        dim = shape[-1]
        if dim is None:
            raise ValueError("PDDM needs a known feature dimension (last axis)")

        def kernel(name: str, shape: tuple[int, ...], initializer: Any = None) -> keras.Variable:
            return self.add_weight(name=name, shape=shape, initializer=initializer or self.kernel_initializer,
                                   regularizer=self.kernel_regularizer)

        def bias(name: str, size: int) -> keras.Variable:
            return self.add_weight(name=name, shape=(size,), initializer="zeros")

        self.u_kernel = kernel("u_kernel", (dim, self.units))
        self.u_bias = bias("u_bias", self.units)
        self.v_kernel = kernel("v_kernel", (dim, self.units))
        self.v_bias = bias("v_bias", self.units)
        self.c_kernel = kernel("c_kernel", (2 * self.units, self.combined_units))
        self.c_bias = bias("c_bias", self.combined_units)
        self.s_kernel = kernel("s_kernel", (self.combined_units, 1), self.score_initializer)
        self.s_bias = bias("s_bias", 1)
        self.distance_scale = (self.add_weight(name="distance_weight", shape=(),
                                               initializer=keras.initializers.Constant(self.distance_weight))
                               if self.distance_weight > 0 else None)

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
        distance = safe_norm(u, keepdims=False)
        if self.normalize_inputs:
            u, v = l2_normalize(u), l2_normalize(v)
        u_h = tf.nn.relu(tf.matmul(u, self.u_kernel) + self.u_bias)
        v_h = tf.nn.relu(tf.matmul(v, self.v_kernel) + self.v_bias)
        return self._head(u_h, v_h, distance)

    def all_pair_scores(self, f: tf.Tensor) -> tf.Tensor:
        """Score matrix S[i, j] of every pair of one batch: [m, d] -> [m, m], symmetric.

        u and v are symmetric in the pair, so only the m (m + 1) / 2 pairs i <= j are scored and
        the lower triangle is their mirror image: half the work of scoring every ordered pair, and
        each score equals the pair mode's up to float rounding.
        """
        f = l2_normalize(f)
        m = tf.shape(f)[0]
        pairs = _upper_pairs(m)  # [P, 2], row-major
        i, j = pairs[:, 0], pairs[:, 1]
        # u branch: |f_i - f_j| is not linear in the pair, so it is formed for every pair ([P, d]).
        u = tf.abs(tf.gather(f, i) - tf.gather(f, j))
        distance = safe_norm(u, keepdims=False)
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
        return _symmetric_from_upper(self._head(u_h, v_h, distance), m)

    def _head(self, u_h: tf.Tensor, v_h: tf.Tensor, distance: tf.Tensor) -> tf.Tensor:
        """Shared top of both modes: [..., h], [..., h], distances [...] -> scores [...]."""
        if self.normalize_hidden:
            u_h, v_h = l2_normalize(u_h), l2_normalize(v_h)
        # W_c [u''; v''] split into its two halves: same product, no concatenated copy (and one split, whose
        # gradient is one concatenation where two slices' would be two zero-padded copies and their sum).
        c_u, c_v = tf.split(self.c_kernel, 2, axis=0)
        c = tf.nn.relu(_dense(u_h, c_u) + _dense(v_h, c_v) + self.c_bias)
        scores = tf.squeeze(_dense(c, self.s_kernel), axis=-1) + self.s_bias[0]
        if self.distance_scale is not None:
            scores -= self.distance_scale * distance
        return scores

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
            distance_weight=self.distance_weight,
            score_initializer=keras.initializers.serialize(self.score_initializer),
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PDDM:
        # A config saved before the prior existed describes a unit without it (and without its weight).
        return cls(**{"distance_weight": 0.0, **config})


def _upper_pairs(m: tf.Tensor) -> tf.Tensor:
    """The pairs i <= j of m items in row-major order: [m (m + 1) / 2, 2] int32."""
    upper = tf.linalg.band_part(tf.ones(tf.stack([m, m]), tf.int8), 0, -1) > 0
    return tf.cast(tf.where(upper), tf.int32)


def _symmetric_from_upper(values: tf.Tensor, m: tf.Tensor) -> tf.Tensor:
    """The symmetric [m, m] matrix whose entries i <= j are `values` [m (m + 1) / 2] (in the order of
    `_upper_pairs`): entry (i, j) is the value of the pair (min(i, j), max(i, j)), found at
    position lo m - lo (lo - 1) / 2 + (hi - lo) of the row-major list. One gather of m^2 values,
    where scattering the upper triangle into a zero matrix and mirroring it takes a scatter, a
    transpose and a select (about 1 ms of the 64 x 4 mining scores; benchmarks/results/train_step_floor.md)."""
    r = tf.range(m)
    lo, hi = tf.minimum(r[:, None], r[None, :]), tf.maximum(r[:, None], r[None, :])
    return tf.gather(values, lo * m - lo * (lo - 1) // 2 + (hi - lo))


def _dense(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """x [..., a] times kernel [a, b]: a plain `matmul` for the usual [n, a] (`tensordot` reshapes
    around it, a handful of small ops more in each forward and backward pass of the train step)."""
    return tf.matmul(x, kernel) if x.shape.rank == 2 else tf.tensordot(x, kernel, axes=1)
