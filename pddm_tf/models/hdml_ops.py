"""HDML's building blocks (Zheng, Chen, Lu & Zhou, CVPR 2019; METHODS.md section 3): the hardness-aware
interpolation, the N-pair loss of the authors' code, and the small helpers of `HDMLModel`.

Constants (the derivation behind `HDMLModel`'s defaults). Two temperatures set the schedule: the
hardness factor e = exp(-alpha / J_avg) (1 = the original negative, 0 = as close as the positive)
and the real-sample weight w = exp(-beta / J_gen_avg).

* beta and the J_soft scale s. J_gen = J_recon + s * lambda * (cross-entropies), and with
  lambda = 0.5 and s large enough that J_recon << s * CE, J_gen / s is a mean of cross-entropies,
  so w = exp(-(beta / s) / CE). That depends on the ratio beta / s and on the classifier's
  cross-entropy (log C for C classes at the start, whatever the embedding's norm), not on the
  embedding scale: the original's beta = s = 1e4 (beta = 5e3 for CUB) carry over unchanged.
* alpha. The original feeds the hardness with the block mean of the weighted real metric loss,
  J_avg = mean(w * J_m(real)), and keeps alpha = 90 for its unnormalised N-pair loss, whose values
  start in the tens. The scale of J_m depends on the base loss, the embedding norm, the batch and
  the backbone (with unit-norm embeddings the N-pair logits are cosines and J_m cannot fall below
  about log N - 1, so alpha / J_avg >= 90 / log N and e < 1e-9 from the first block on), so by
  default alpha is calibrated on the run itself: at the end of the first 64-step block,
  alpha = -ln(e_0) * J_avg,1 (e_0 = `initial_easiness`, 0.5), which gives

      e(t) = e_0 ^ (J_avg,1 / J_avg(t)):

  synthetic negatives halfway between the positive's and the negative's distance after the first
  block, and the factor squares each time the weighted loss halves. Before the first block ends,
  J_avg is its initial value (`initial_running_mean`, large) and e = 1: easy synthetics, as in the
  original.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from pddm_tf.distances import EPSILON, safe_norm

HDML_BASES = ("npair", "triplet", "pddm")
#: What the generator is fed (see `HDMLModel`).
GENERATOR_INPUTS = ("single", "anchor_pair")
#: The authors' N-pair L2 regulariser weight (`reg_lambda` of TensorFlow's npairs_loss in their code).
NPAIR_REG = 0.002


def hardness_aware_negatives(anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor,
                             j_avg: tf.Tensor | float, alpha: tf.Tensor | float = 90.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Pulls each negative toward its anchor to a hardness set by the running metric loss.

    With d+ = ||z - z+||, d- = ||z - z-|| (Euclidean), METHODS.md section 3:

        z^- = z + lambda0 (z- - z),  lambda0 = [d+ + (d- - d+) exp(-alpha / J_avg)] / d-   if d+ < d-
        z^- = z-                                                                       otherwise

    so the synthetic negative lies on the segment [z, z-] at distance d+ + (d- - d+) exp(-alpha/J_avg)
    from the anchor: J_avg -> inf keeps z- (easy), J_avg -> 0 puts it at distance d+ (as hard as the
    positive). A negative already closer than the positive is left alone. The segment is a chord:
    between two unit embeddings its inner points are shorter than 1 (the midpoint of two orthogonal
    unit vectors has norm 0.71), so a synthetic negative of unit-norm embeddings is not a unit vector.

    Args:
      anchor, positive, negative: [n, d] embeddings z, z+, z-.
      j_avg: scalar running mean of the metric loss, > 0 (it is floored, so 0 means "hardest").
      alpha: hardness temperature (90 in the paper; a scalar, or a scalar tensor).
    Returns:
      (z^- [n, d], lambda0 [n], exactly 1 for the unchanged rows).
    """
    anchor = tf.convert_to_tensor(anchor)
    positive = tf.convert_to_tensor(positive, anchor.dtype)
    negative = tf.convert_to_tensor(negative, anchor.dtype)
    d_pos = safe_norm(anchor - positive, keepdims=False)
    d_neg = safe_norm(anchor - negative, keepdims=False)
    # exp(-alpha / J_avg) in [0, 1]; the floor turns J_avg = 0 into exp(-inf) = 0, not 0/0.
    easiness = tf.exp(-tf.cast(alpha, anchor.dtype) / tf.maximum(tf.cast(j_avg, anchor.dtype), EPSILON))
    harden = d_pos < d_neg
    # d- > d+ >= 0 on the rows we move; the other rows divide by 1 so no branch produces inf/NaN
    # (tf.where would otherwise still back-propagate NaN from the unused branch).
    safe_d_neg = tf.where(harden, d_neg, tf.ones_like(d_neg))
    lambda0 = tf.where(harden, (d_pos + (d_neg - d_pos) * easiness) / safe_d_neg, tf.ones_like(d_neg))
    moved = anchor + lambda0[:, None] * (negative - anchor)
    return tf.where(harden[:, None], moved, negative), lambda0


def npairs_loss(anchors: tf.Tensor, candidates: tf.Tensor, reg_lambda: float = NPAIR_REG) -> tf.Tensor:
    """The N-pair loss of HDML's code: TensorFlow's `npairs_loss` formula with per-anchor candidates.

    With anchors a [N, d] and candidates c [N, N, d] (row i: anchor i's candidates, its positive at
    j = i, as `NPairMiner`'s layout; for real samples c[i, j] = p_j):

        L = 1/N sum_i [logsumexp_j (a_i . c_ij) - a_i . c_ii]
            + reg_lambda / 4 * (1/N sum_i ||a_i||^2 + 1/N^2 sum_ij ||c_ij||^2)

    For real samples the regulariser is TF's 0.25 reg_lambda (mean ||a||^2 + mean ||p||^2); for the
    synthetic ones it averages every candidate row, as the authors' `new_npair_loss` does with
    `equal_shape=False`. The embeddings are meant unnormalised: the regulariser is what bounds their
    norm (on unit vectors it is the constant reg_lambda / 2). N = 0 gives 0.
    """
    n = tf.shape(anchors)[0]
    logits = tf.einsum("id,ijd->ij", anchors, candidates)  # [N, N], targets on the diagonal
    # Softmax cross-entropy written out: the fused op rejects the [0, 0] logits of N = 0.
    cross_entropy = tf.reduce_logsumexp(logits, axis=1) - tf.linalg.diag_part(logits)
    count = tf.maximum(tf.cast(n, anchors.dtype), 1.0)
    squared_anchors = tf.reduce_sum(tf.square(anchors)) / count
    squared_candidates = tf.reduce_sum(tf.square(candidates)) / (count * count)
    return tf.reduce_sum(cross_entropy) / count + 0.25 * reg_lambda * (squared_anchors + squared_candidates)


def adam(learning_rate: float, weight_decay: float, name: str) -> keras.optimizers.Optimizer:
    """Adam, or AdamW (decoupled decay) when `weight_decay` > 0."""
    if weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, name=name)
    return keras.optimizers.Adam(learning_rate, name=name)


def mean_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean softmax cross-entropy, 0 for an empty batch."""
    return mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def mean(values: tf.Tensor) -> tf.Tensor:
    """Mean of a [n] vector, 0 (not NaN) when n = 0."""
    return tf.reduce_sum(values) / tf.maximum(tf.cast(tf.size(values), values.dtype), 1.0)
