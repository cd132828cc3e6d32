"""Numpy references of the pair losses and miners added for issue 32, written from the papers (and
pytorch-metric-learning's documented conventions), not from pddm_tf's TensorFlow code: one anchor,
one pair at a time, with Python loops, so that they share nothing with the vectorised versions.

Every function takes embeddings x [m, d] and labels y [m] (the batch is its own reference set: a
sample is never its own positive) and returns the loss as a float64 scalar.
"""

from __future__ import annotations

import math

import numpy as np


def cosine(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _softplus(value: float) -> float:
    return max(value, 0.0) + math.log1p(math.exp(-abs(value)))


def _positives(y: np.ndarray, i: int) -> list[int]:
    return [j for j in range(len(y)) if j != i and y[j] == y[i]]


def _negatives(y: np.ndarray, i: int) -> list[int]:
    return [j for j in range(len(y)) if y[j] != y[i]]


def circle(x, y, m=0.4, gamma=80.0, weights=None) -> float:
    """Circle loss (Sun et al., CVPR 2020, eq. 6), per anchor, averaged over the non-zero anchors.

    The weights alpha_p = [1 + m - s_p]_+, alpha_n = [s_n + m]_+ are constants of the gradient
    (the paper's "stop gradient" on the self-paced weights): `weights`, a similarity matrix, fixes
    them (for differentiating by central differences); None computes them from x."""
    s = cosine(x)
    w = s if weights is None else weights
    losses = []
    for i in range(len(y)):
        pos, neg = _positives(y, i), _negatives(y, i)
        if not pos or not neg:
            continue
        logit_p = [-gamma * max(1 + m - w[i, j], 0.0) * (s[i, j] - (1 - m)) for j in pos]
        logit_n = [gamma * max(w[i, k] + m, 0.0) * (s[i, k] - m) for k in neg]
        losses.append(_softplus(_logsumexp(logit_p) + _logsumexp(logit_n)))
    nonzero = [v for v in losses if v > 0]
    return sum(nonzero) / max(len(nonzero), 1)


def supcon(x, y, temperature=0.1) -> float:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, L^sup_out, eq. 2): for each anchor,
    minus the mean over its positives of log softmax over every other sample; averaged over the
    anchors with a non-zero loss."""
    s = cosine(x) / temperature
    losses = []
    for i in range(len(y)):
        pos = _positives(y, i)
        if not pos:
            continue
        others = [j for j in range(len(y)) if j != i]
        denominator = _logsumexp([s[i, j] for j in others])
        losses.append(-sum(s[i, j] - denominator for j in pos) / len(pos))
    nonzero = [v for v in losses if v > 0]
    return sum(nonzero) / max(len(nonzero), 1)


def ntxent(x, y, temperature=0.07) -> float:
    """NT-Xent (Chen et al., SimCLR, ICML 2020) on labels: for each positive pair (a, p),
    -log(exp(s_ap / t) / (exp(s_ap / t) + sum over a's negatives n of exp(s_an / t))); the mean over
    positive pairs."""
    s = cosine(x) / temperature
    losses = []
    for a in range(len(y)):
        neg = _negatives(y, a)
        for p in _positives(y, a):
            losses.append(_logsumexp([s[a, p]] + [s[a, n] for n in neg]) - s[a, p])
    return sum(losses) / max(len(losses), 1)


def tuplet_margin(x, y, margin_degrees=5.73, scale=64.0) -> float:
    """Tuplet margin loss (Yu & Tao, ICCV 2019, eq. 5): for each positive pair (a, p) with angle
    theta_ap, log(1 + sum over a's negatives n of exp(scale (cos theta_an - cos(theta_ap - margin))));
    the mean over positive pairs."""
    s = cosine(x)
    margin = math.radians(margin_degrees)
    losses = []
    for a in range(len(y)):
        neg = _negatives(y, a)
        for p in _positives(y, a):
            shifted = math.cos(math.acos(min(max(s[a, p], -1.0 + 1e-7), 1.0 - 1e-7)) - margin)
            losses.append(_logsumexp([0.0] + [scale * (s[a, n] - shifted) for n in neg]))
    return sum(losses) / max(len(losses), 1)


def fastap(x, y, num_bins=10) -> float:
    """FastAP (Cakir et al., CVPR 2019, eq. 9-11): 1 - the histogram approximation of average
    precision of each anchor's ranking of the batch by squared Euclidean distance of the unit-norm
    embeddings (in [0, 4]), with triangular soft binning over num_bins + 1 bin centres; the mean over
    the anchors that have a positive."""
    x = np.asarray(x, np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    delta = 4.0 / num_bins
    centres = [b * delta for b in range(num_bins + 1)]
    losses = []
    for i in range(len(y)):
        pos_hist = [0.0] * len(centres)
        all_hist = [0.0] * len(centres)
        n_pos = 0
        for j in range(len(y)):
            if j == i:
                continue
            d = float(np.sum((unit[i] - unit[j]) ** 2))
            is_pos = y[j] == y[i]
            n_pos += int(is_pos)
            for b, c in enumerate(centres):
                weight = max(1.0 - abs(d - c) / delta, 0.0)
                all_hist[b] += weight
                if is_pos:
                    pos_hist[b] += weight
        ap, cum_pos, cum_all = 0.0, 0.0, 0.0
        for b in range(len(centres)):
            cum_pos += pos_hist[b]
            cum_all += all_hist[b]
            if pos_hist[b] * cum_pos > 0 and cum_all > 0:
                ap += pos_hist[b] * cum_pos / cum_all
        if n_pos:
            losses.append(1.0 - ap / n_pos)
    return sum(losses) / max(len(losses), 1)


def multi_similarity_pairs(x, y, epsilon=0.1):
    """The pairs the multi-similarity miner keeps (Wang et al., CVPR 2019, eq. 3-4) on cosine
    similarity: positive (a, p) with s_ap - epsilon < max over a's negatives of s_an, negative (a, n)
    with s_an + epsilon > min over a's positives of s_ap. Returns (set of positive pairs, set of
    negative pairs)."""
    s = cosine(x)
    pos_pairs, neg_pairs = set(), set()
    for a in range(len(y)):
        pos, neg = _positives(y, a), _negatives(y, a)
        if not pos or not neg:
            continue
        hardest_neg = max(s[a, n] for n in neg)
        hardest_pos = min(s[a, p] for p in pos)
        pos_pairs |= {(a, p) for p in pos if s[a, p] - epsilon < hardest_neg}
        neg_pairs |= {(a, n) for n in neg if s[a, n] + epsilon > hardest_pos}
    return pos_pairs, neg_pairs


def pair_margin_pairs(x, y, pos_margin=0.2, neg_margin=0.8):
    """Pairs the pair-margin miner keeps under Euclidean distance: positives farther than
    pos_margin, negatives closer than neg_margin."""
    x = np.asarray(x, np.float64)
    d = np.sqrt(np.maximum(np.sum((x[:, None] - x[None]) ** 2, axis=-1), 0.0))
    pos_pairs = {(a, p) for a in range(len(y)) for p in _positives(y, a) if d[a, p] > pos_margin}
    neg_pairs = {(a, n) for a in range(len(y)) for n in _negatives(y, a) if d[a, n] < neg_margin}
    return pos_pairs, neg_pairs


def triplet_margin_triplets(x, y, margin=0.2, kind="all"):
    """Triplets (a, p, n) the triplet-margin miner keeps under Euclidean distance, by the margin
    d_an - d_ap: "all" <= margin, "hard" <= 0, "semihard" in (0, margin], "easy" > margin."""
    x = np.asarray(x, np.float64)
    d = np.sqrt(np.maximum(np.sum((x[:, None] - x[None]) ** 2, axis=-1), 0.0))
    keep = {"all": lambda g: g <= margin, "hard": lambda g: g <= 0, "semihard": lambda g: 0 < g <= margin,
            "easy": lambda g: g > margin}[kind]
    return {(a, p, n) for a in range(len(y)) for p in _positives(y, a) for n in _negatives(y, a)
            if keep(d[a, n] - d[a, p])}
