"""Hard quadruplet mining (METHODS.md section 2) and the label masks every miner and loss shares.

All functions are pure TensorFlow, trace under `tf.function` and contain no Python loop over the
batch. A score matrix is a similarity (higher = more similar): the PDDM all-pairs scores, or
`euclidean_scores` (negative squared distances) for the Euclidean-mining ablation.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from pddm_tf.distances import pairwise_squared_distances

MINING_MODES = ("hardest", "per_pair")


class Quadruplets(NamedTuple):
    """Mined quadruplets (i, j, k, l): (i, j) a positive pair, k a negative of i, l a negative of j.

    Attributes:
      indices: [q, 4] int32 batch indices, q >= 0 (q = 0 when the batch has no valid quadruplet).
      num_candidates: scalar int32, how many quadruplets the miner looked for (1 for "hardest",
        the number of unordered positive pairs for "per_pair"); q / max(num_candidates, 1) is the
        fraction of valid quadruplets logged during training.
    """

    indices: tf.Tensor
    num_candidates: tf.Tensor

    @property
    def count(self) -> tf.Tensor:
        return tf.shape(self.indices)[0]

    def valid_fraction(self) -> tf.Tensor:
        """Fraction of the sought quadruplets that exist, as float32 in [0, 1]."""
        return tf.cast(self.count, tf.float32) / tf.cast(tf.maximum(self.num_candidates, 1), tf.float32)


def check_labels(labels: tf.Tensor) -> tf.Tensor:
    """Validates a label vector ([m] integers) and returns it as int32; raises a clear error otherwise."""
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype.name}")
    if labels.shape.rank is not None and labels.shape.rank != 1:
        raise ValueError(f"labels must have shape [batch], got shape {labels.shape}")
    return tf.cast(labels, tf.int32)


def pair_masks(labels: tf.Tensor, ref_labels: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Positive and negative pair masks of a batch, or of a batch against reference samples.

    Args:
      labels: [m] integer class ids.
      ref_labels: None (the batch against itself), or [n] class ids of reference samples (e.g. a
        memory of past batches), which are other samples: no pair is a self pair.
    Returns:
      (positive [m, n] bool: same label and not a self pair (i != j when ref_labels is None),
      negative [m, n] bool: different labels); n = m without ref_labels.
    """
    labels = check_labels(labels)
    if ref_labels is not None:
        same = tf.equal(labels[:, None], check_labels(ref_labels)[None, :])
        return same, tf.logical_not(same)
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def euclidean_scores(embeddings: tf.Tensor) -> tf.Tensor:
    """Similarity for Euclidean mining: -||f_i - f_j||^2, [m, d] -> [m, m]."""
    return -pairwise_squared_distances(embeddings)


def _masked_argmax(values: tf.Tensor, mask: tf.Tensor, axis: int) -> tf.Tensor:
    """argmax of `values` over the entries where `mask` holds (rows with no entry return 0)."""
    lowest = tf.fill(tf.shape(values), values.dtype.min)
    return _argmax(tf.where(mask, values, lowest), axis)


def _argmax(values: tf.Tensor, axis: int) -> tf.Tensor:
    """tf.argmax that also answers for an empty axis (an empty batch): index 0, like a row of ties.

    TensorFlow's argmax refuses a reduction over 0 entries; one slot of the lowest value is appended
    (ties go to the first index, so it is only picked when the axis is empty) and clamped to 0.
    """
    axis = axis % values.shape.rank
    pad_shape = tf.tensor_scatter_nd_update(tf.shape(values), [[axis]], [1])
    padded = tf.concat([values, tf.fill(pad_shape, values.dtype.min)], axis=axis)
    index = tf.argmax(padded, axis=axis, output_type=tf.int32)
    return tf.minimum(index, tf.maximum(tf.shape(values)[axis] - 1, 0))


def _hardest_negatives(scores: tf.Tensor, negative: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """For every anchor, the most similar negative and whether it has one: [m] int32, [m] bool."""
    return _masked_argmax(scores, negative, axis=1), tf.reduce_any(negative, axis=1)


def mine_quadruplets(labels: tf.Tensor, scores: tf.Tensor, mode: str = "hardest") -> Quadruplets:
    """Hard quadruplets from a similarity matrix (METHODS.md section 2).

    The hard negatives of a positive pair (i, j) are k = argmax_{y_k != y_i} S_ik and
    l = argmax_{y_l != y_j} S_jl. Only positive pairs whose two members both have a negative in the
    batch are eligible, so an anchor without positive or without negative never yields a quadruplet.

    Args:
      labels: [m] integer class ids.
      scores: [m, m] similarity matrix (higher = more similar), e.g. PDDM all-pairs scores or
        `euclidean_scores(embeddings)`. Gradients are not needed here; pass a stopped tensor.
      mode: "hardest": the paper's single quadruplet per batch, whose positive pair has the lowest
        similarity, (i^, j^) = argmin_{(i,j) in P} S_ij. "per_pair": one quadruplet for every
        unordered positive pair i < j.
    Returns:
      `Quadruplets` with indices [q, 4] (q <= 1 for "hardest").

    Example (points 0, 1 | 1.5, 3 on a line: the hardest negative of 0 and 1 is 2, that of 2 and 3 is 1):
      >>> scores = euclidean_scores(tf.constant([[0.0], [1.0], [1.5], [3.0]]))
      >>> mine_quadruplets(tf.constant([0, 0, 1, 1]), scores, "per_pair").indices.numpy().tolist()
      [[0, 1, 2, 2], [2, 3, 1, 1]]
      >>> mine_quadruplets(tf.constant([0, 0, 1, 1]), scores, "hardest").indices.numpy().tolist()  # S_23 < S_01
      [[2, 3, 1, 1]]
    """
    if mode not in MINING_MODES:
        raise ValueError(f"unknown mining mode {mode!r}; expected one of {MINING_MODES}")
    labels = check_labels(labels)
    scores = tf.convert_to_tensor(scores)
    if scores.shape.rank is not None and scores.shape.rank != 2:
        raise ValueError(f"scores must be a [batch, batch] matrix, got shape {scores.shape}")
    positive, negative = pair_masks(labels)
    hard_negative, has_negative = _hardest_negatives(scores, negative)
    upper = tf.linalg.band_part(tf.ones_like(positive, dtype=tf.int32), 0, -1) > 0
    eligible = positive & upper & has_negative[:, None] & has_negative[None, :]
    num_positive_pairs = tf.reduce_sum(tf.cast(positive & upper, tf.int32))

    if mode == "hardest":
        m = tf.maximum(tf.shape(scores)[0], 1)  # an empty batch must not divide by 0 below
        lowest = tf.fill(tf.shape(scores), scores.dtype.min)
        flat = _argmax(tf.reshape(tf.where(eligible, -scores, lowest), [-1]), axis=0)  # the least similar pair
        pairs = tf.reshape(tf.stack([flat // m, flat % m]), [1, 2])
        # Keep the row only if a positive pair was eligible: q = 1 or 0, no dynamic Python branch.
        pairs = tf.boolean_mask(pairs, tf.reshape(tf.reduce_any(eligible), [1]))
        num_candidates = tf.constant(1, tf.int32)
    else:
        pairs = tf.cast(tf.where(eligible), tf.int32)
        num_candidates = num_positive_pairs
    i, j = pairs[:, 0], pairs[:, 1]
    indices = tf.stack([i, j, tf.gather(hard_negative, i), tf.gather(hard_negative, j)], axis=1)
    return Quadruplets(indices=indices, num_candidates=num_candidates)


def score_gap(labels: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    """Mean similarity of positive pairs minus mean similarity of negative pairs (0 if either is empty)."""
    positive, negative = pair_masks(labels)

    def masked_mean(mask: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(mask, scores.dtype)
        return tf.reduce_sum(scores * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

    return masked_mean(positive) - masked_mean(negative)


# -- miners of the baseline losses (pddm_tf.losses) --------------------------------------------
# They take a [m, m] distance matrix (smaller = more similar) and return indices only; the losses
# gather the distances they need from their own, differentiable, matrix.


def semi_hard_negatives(labels: tf.Tensor, distances: tf.Tensor,
                        ref_labels: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """FaceNet semi-hard negatives, as in TensorFlow Addons' `triplet_semihard_loss`.

    For an anchor a and a positive p, the negative is the closest one farther than the positive,
    n = argmin_{y_n != y_a, D_an > D_ap} D_an; when no negative is that far, the farthest negative
    n = argmax_{y_n != y_a} D_an (i.e. the easiest, whose hinge is the smallest).

    Args:
      labels: [m] integer class ids.
      distances: [m, n] anchor-to-candidate distances.
      ref_labels: [n] class ids of the candidates when they are not the batch (`pair_masks`).
    Returns:
      (negatives [m, n] int32, the negative of every (anchor, positive) pair, meaningful where
      (a, p) is a positive pair and a has a negative; has_negative [m] bool).
    """
    _, negative = pair_masks(labels, ref_labels)
    d_an = distances[:, None, :]  # [a, 1, n]
    d_ap = distances[:, :, None]  # [a, p, 1]
    farther = negative[:, None, :] & (d_an > d_ap)  # [a, p, n]: O(m^3) booleans, small for m <= 256
    closest_farther = _masked_argmax(-d_an, farther, axis=2)
    farthest = _masked_argmax(distances, negative, axis=1)
    negatives = tf.where(tf.reduce_any(farther, axis=2), closest_farther, farthest[:, None])
    return negatives, tf.reduce_any(negative, axis=1)


def batch_hard_triplets(labels: tf.Tensor, distances: tf.Tensor,
                        ref_labels: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Batch-hard mining (Hermans et al. 2017): per anchor its farthest positive and closest negative.

    Args:
      labels: [m] integer class ids. distances: [m, n]. ref_labels: [n] candidates' class ids when
        they are not the batch (`pair_masks`).
    Returns:
      (positives [m] int32, negatives [m] int32, valid [m] bool: the anchor has both).
    """
    positive, negative = pair_masks(labels, ref_labels)
    valid = tf.reduce_any(positive, axis=1) & tf.reduce_any(negative, axis=1)
    return _masked_argmax(distances, positive, axis=1), _masked_argmax(-distances, negative, axis=1), valid


def npair_pairs(labels: tf.Tensor) -> tf.Tensor:
    """The (anchor, positive) pairs of the multi-class N-pair loss (Sohn 2016).

    Every class with at least two samples contributes its first two occurrences in batch order.

    Args:
      labels: [m] integer class ids.
    Returns:
      [c, 2] int32 (anchor, positive), c = number of such classes, ordered by anchor position.
    """
    labels = check_labels(labels)
    positions = tf.range(tf.shape(labels)[0])
    same = tf.equal(labels[:, None], labels[None, :])
    earlier = positions[None, :] < positions[:, None]  # [i, j]: j comes before i
    rank = tf.reduce_sum(tf.cast(same & earlier, tf.int32), axis=1)  # occurrence number within class
    class_size = tf.reduce_sum(tf.cast(same, tf.int32), axis=1)
    anchors = tf.reshape(tf.cast(tf.where((rank == 0) & (class_size >= 2)), tf.int32), [-1])
    second = same & tf.equal(rank, 1)[None, :]  # [i, j]: j is the second occurrence of i's class
    positives = tf.gather(_argmax(tf.cast(second, tf.int32), axis=1), anchors)
    return tf.stack([anchors, positives], axis=1)


def distance_weighted_negatives(
    labels: tf.Tensor, distances: tf.Tensor, dim: int | tf.Tensor, cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4, seed: tf.Tensor | None = None, ref_labels: tf.Tensor | None = None,
) -> tf.Tensor:
    """Distance-weighted negative sampling (Wu et al. 2017, "Sampling Matters", section 4).

    On the unit sphere in R^n, pairwise distances of uniform points have density
    q(d) ∝ d^(n-2) (1 - d^2/4)^((n-3)/2). A negative k of anchor a is drawn with probability
    ∝ q(D_ak)^-1 among the negatives with D_ak < nonzero_loss_cutoff (farther ones give a zero
    margin loss), with D clipped to >= cutoff: the clip bounds the weight, playing the role of the
    paper's min(lambda, q^-1) as in the authors' code. An anchor without such a negative samples
    uniformly over all its negatives. Every positive pair (a, p) gets its own draw.

    Args:
      labels: [m] integer class ids.
      distances: [m, m] Euclidean distances of L2-normalised embeddings (no gradient needed).
      dim: n, the embedding dimension.
      cutoff, nonzero_loss_cutoff: see above.
      seed: None for `tf.random.categorical`, or a [2] integer seed for the stateless (reproducible)
        `tf.random.stateless_categorical`.
      ref_labels: [n] candidates' class ids when they are not the batch (`pair_masks`).
    Returns:
      [t, 3] int32 triplets (anchor, positive, negative): one per ordered positive pair whose anchor
      has a negative, in row-major (anchor, positive) order; t = 0 when there is none.
    """
    positive, negative = pair_masks(labels, ref_labels)
    logits = _distance_weight_logits(distances, negative, dim, cutoff, nonzero_loss_cutoff)
    pairs = tf.cast(tf.where(positive & tf.reduce_any(negative, axis=1)[:, None]), tf.int32)
    pair_logits = tf.gather(logits, pairs[:, 0])

    def draw() -> tf.Tensor:
        if seed is None:
            return tf.random.categorical(pair_logits, 1, dtype=tf.int32)
        return tf.random.stateless_categorical(pair_logits, 1, seed, dtype=tf.int32)

    # The samplers refuse 0 classes (an empty batch, which has no pair to draw for anyway).
    drawn = tf.cond(tf.shape(pair_logits)[1] > 0, draw, lambda: tf.zeros([tf.shape(pairs)[0], 1], tf.int32))
    return tf.concat([pairs, drawn], axis=1)


def closest_negatives_beyond_cutoff(labels: tf.Tensor, distances: tf.Tensor, cutoff: float = 0.5,
                                    ref_labels: tf.Tensor | None = None) -> tf.Tensor:
    """The Divide-and-Conquer authors' negative sampler (their lib/loss/sampler.py; METHODS.md section 7).

    Deterministic: anchor a with P_a positives (same label, not itself) takes its P_a closest
    negatives among those at distance D_an >= `cutoff`, and pairs them one to one with its
    positives: the r-th closest with the r-th positive in index order (the margin loss sums its
    pull and push terms separately, so the pairing does not change its value). Not to be confused
    with the margin-loss paper's distance-weighted sampling (`distance_weighted_negatives`), which
    section 4 names.

    Readings where the released code is unspecific: P_a is the anchor's own positive count (the
    code uses the batch's mean count, the same in its class-balanced batches); an anchor with fewer
    than P_a negatives beyond the cutoff completes its list with its closest negatives below the
    cutoff (the code's top-k would then also pick positives, or the anchor itself); positives beyond
    the anchor's number of negatives get no triplet (the code truncates likewise).

    Args:
      labels: [m] integer class ids.
      distances: [m, m] Euclidean distances (no gradient needed).
      cutoff: the distance below which negatives are only used to complete a list.
      ref_labels: [n] candidates' class ids when they are not the batch (`pair_masks`).
    Returns:
      [t, 3] int32 triplets (anchor, positive, negative), one per ordered positive pair (a, p) whose
      rank among a's positives is below a's number of negatives, in row-major (anchor, positive)
      order; t = 0 when there is none.
    """
    positive, negative = pair_masks(labels, ref_labels)
    distances = tf.convert_to_tensor(distances)
    # Sort each row by (class of the entry, distance): 0 = negative beyond the cutoff, 1 = negative
    # below it, 2 = not a negative. Two stable sorts give that order exactly, with no offset added
    # to distances (which would cost float precision).
    by_distance = tf.argsort(distances, axis=1, stable=True)
    kind = tf.where(negative, tf.where(distances >= cutoff, 0, 1), 2)
    by_kind = tf.argsort(tf.gather(kind, by_distance, batch_dims=1), axis=1, stable=True)
    ordered_negatives = tf.gather(by_distance, by_kind, batch_dims=1)  # [m, m]: a's negatives first, closest first
    # Rank r of positive p among a's positives (index order), and whether a has an (r+1)-th negative.
    rank = tf.cumsum(tf.cast(positive, tf.int32), axis=1) - 1
    num_negatives = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1, keepdims=True)
    pairs = tf.cast(tf.where(positive & (rank < num_negatives)), tf.int32)  # [t, 2]
    drawn = tf.gather_nd(ordered_negatives, tf.stack([pairs[:, 0], tf.gather_nd(rank, pairs)], axis=1))
    return tf.concat([pairs, drawn[:, None]], axis=1)


def _distance_weight_logits(distances: tf.Tensor, negative: tf.Tensor, dim: int | tf.Tensor, cutoff: float,
                            nonzero_loss_cutoff: float) -> tf.Tensor:
    """log q(D)^-1 on the eligible negatives, 0 on all negatives of anchors with none, -inf elsewhere."""
    n = tf.cast(dim, distances.dtype)
    d = tf.maximum(distances, cutoff)
    # The floor only matters for d -> 2 (antipodal points), which are never eligible anyway.
    log_q = (n - 2.0) * tf.math.log(d) + 0.5 * (n - 3.0) * tf.math.log(tf.maximum(1.0 - 0.25 * d * d, 1e-12))
    eligible = negative & (distances < nonzero_loss_cutoff)
    has_eligible = tf.reduce_any(eligible, axis=1, keepdims=True)
    minus_inf = tf.fill(tf.shape(distances), tf.constant(-float("inf"), distances.dtype))
    weighted = tf.where(eligible, -log_q, minus_inf)
    uniform = tf.where(negative, tf.zeros_like(distances), minus_inf)
    return tf.where(has_eligible, weighted, uniform)
