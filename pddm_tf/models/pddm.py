"""`PDDMModel`: hard-quadruplet training with a PDDM unit (METHODS.md sections 1 and 2).

`mine_with_pddm` and `pddm_quadruplet_terms` are its two hooks as functions, which the
Divide-and-Conquer learners with a PDDM loss call on their slice of the embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from pddm_tf.distances import EPSILON, l2_normalize, safe_norm
from pddm_tf.layers import PDDM
from pddm_tf.layers.pddm import _symmetric_from_upper, _upper_pairs
from pddm_tf.losses import DoubleHeaderHingeLoss
from pddm_tf.miners import euclidean_scores, mine_quadruplets, quadruplet_tuples, score_gap
from pddm_tf.models.base import EmbeddingModel

#: How `PDDMModel` ranks pairs for mining: by PDDM score (the paper) or by Euclidean distance (the ablation).
MINING_SCORES = ("pddm", "euclidean")
#: What `pddm_quadruplet_terms` returns, in logging order.
PDDM_TERMS = ("loss", "metric_loss", "embedding_loss", "valid_fraction", "score_gap")


def mine_with_pddm(pddm: PDDM | Callable[[tf.Tensor], tf.Tensor], loss: DoubleHeaderHingeLoss, mining_score: str,
                   embeddings: tf.Tensor, labels: tf.Tensor) -> dict[str, Any]:
    """Quadruplet mining of METHODS.md section 2 on a (stopped) batch: embeddings [m, d], labels [m].

    Ranks pairs by the all-pairs PDDM scores [m, m] of `pddm` (the layer, or a function [m, d] ->
    [m, m] such as its XLA-compiled `all_pair_scores`), or by -||f_i - f_j||^2 when `mining_score` is
    "euclidean", and returns {"quadruplets": `Quadruplets`, "score_gap": scalar}.
    """
    scores = pddm(embeddings) if mining_score == "pddm" else euclidean_scores(embeddings)
    return {"quadruplets": mine_quadruplets(labels, scores, loss.miner.mode), "score_gap": score_gap(labels, scores)}


def _v_halves(pddm: PDDM, f: tf.Tensor) -> tf.Tensor:
    """(W_v f + b_v) / 2 per sample, [m, d] -> [m, h]: two of its rows add up to the v branch's
    pre-activation of their pair (v = (f_i + f_j) / 2 is linear in the pair)."""
    return 0.5 * tf.nn.bias_add(tf.matmul(f, pddm.v_kernel), pddm.v_bias)


def _pair_branches(pddm: PDDM, f: tf.Tensor, halves: tf.Tensor, i: tf.Tensor,
                   j: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """u = |f_i - f_j| [n, d] and the hidden layers u' = ReLU(W_u u + b_u), v' = ReLU(W_v v + b_v)
    [n, h] of the pairs (i[n], j[n]) of normalised embeddings f [m, d] (METHODS.md section 1), the
    u branch's bias and ReLU riding on its product (`bias_add`, fused into the MatMul kernel)."""
    u = tf.abs(tf.gather(f, i) - tf.gather(f, j))
    u_h = tf.nn.relu(tf.nn.bias_add(tf.matmul(u, pddm.u_kernel), pddm.u_bias))
    return u, u_h, tf.nn.relu(tf.gather(halves, i) + tf.gather(halves, j))


#: How many slices of the pair list `_mining_scores` scores one after the other (see there).
_MINING_CHUNKS = 8


def _mining_scores(pddm: PDDM, f: tf.Tensor) -> tf.Tensor:
    """`pddm.all_pair_scores(f)` ([m, d] -> [m, m], METHODS.md section 1) for a unit with
    normalize_inputs=False and normalize_hidden=True, in fewer and cheaper passes over the
    m (m + 1) / 2 pairs' activations, which at 256 images cost as much as their matrix products:
    - the pairs i <= j are scored in `_MINING_CHUNKS` slices of about P / 8 pairs, each slice's
      [P / 8, 128] activations small enough to stay in a core's cache between its passes, and the
      executor runs two slices at once on two cores (256 x 128: 23.3 against 26.5 ms unsliced, quiet;
      benchmarks/results/train_step_floor.md);
    - the u branch's bias and ReLU ride on its product, and the v branch adds two gathered rows of
      (W_v f + b_v) / 2, computed per sample (`_pair_branches`, `_v_halves`);
    - u' and v' are scaled by their inverse norms (a multiply, not a division per element), and c's
      bias rides on the v half's product (`bias_add`, fused into the MatMul kernel: one pass over
      the [P / 8, 128] products fewer than adding it after a row scale of the product);
    - every norm is one `reduce_euclidean_norm` pass (square and sum read the activations twice);
    - the [m, m] matrix is one gather of the pairs' scores (`_symmetric_from_upper`).
    Equal to the layer's scores up to float rounding; used for mining only (no gradient flows
    through mining)."""
    f = l2_normalize(f)
    m = tf.shape(f)[0]
    pairs = _upper_pairs(m)
    halves = _v_halves(pddm, f)
    c_u, c_v = tf.split(pddm.c_kernel, 2, axis=0)
    floor = EPSILON ** 0.5

    def norm(x: tf.Tensor) -> tf.Tensor:
        return tf.maximum(tf.math.reduce_euclidean_norm(x, axis=1), floor)

    def inverse_norm(x: tf.Tensor) -> tf.Tensor:  # [P, 1]: a multiply per element is cheaper than a division
        return tf.math.reciprocal(norm(x))[:, None]

    def chunk_scores(i: tf.Tensor, j: tf.Tensor) -> tf.Tensor:
        u, u_h, v_h = _pair_branches(pddm, f, halves, i, j)
        c = tf.nn.relu(tf.nn.bias_add(tf.matmul(v_h * inverse_norm(v_h), c_v), pddm.c_bias)
                       + tf.matmul(u_h * inverse_norm(u_h), c_u))
        scores = tf.matmul(c, pddm.s_kernel)[:, 0] + pddm.s_bias[0]
        if pddm.distance_scale is not None:  # the layer's Euclidean prior, -g ||f_i - f_j||
            scores -= pddm.distance_scale * norm(u)
        return scores

    size = tf.shape(pairs)[0]
    step = (size + _MINING_CHUNKS - 1) // _MINING_CHUNKS
    bounds = [tf.minimum(k * step, size) for k in range(_MINING_CHUNKS + 1)]
    scores = tf.concat([chunk_scores(pairs[a:b, 0], pairs[a:b, 1]) for a, b in zip(bounds, bounds[1:])], 0)
    return _symmetric_from_upper(scores, m)


def _distinct_pair_scores(pddm: PDDM, embeddings: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """PDDM scores [n] of the pairs (a[n], b[n]) of `embeddings`, in one call that scores each distinct
    pair once. Mining gives every anchor one hardest negative, so the 2q negative pairs of q
    quadruplets are at most m distinct ones (2q = 3m at 16 x 4): the unit's forward and backward
    passes shrink by that much, and the scores and their gradients are those of every pair (the
    gather's gradient sums the repeats)."""
    m = tf.cast(tf.shape(embeddings)[0], tf.int64)
    keys, slots = tf.unique(tf.cast(a, tf.int64) * m + tf.cast(b, tf.int64))
    first, second = keys // m, keys % m
    if type(pddm) is PDDM and not pddm.normalize_inputs:
        scores = _pair_scores(pddm, embeddings, first, second)
    else:
        scores = pddm((tf.gather(embeddings, first), tf.gather(embeddings, second)))
    return tf.gather(scores, slots)


def _pair_scores(pddm: PDDM, embeddings: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """`pddm((embeddings[a], embeddings[b]))` ([m, d], [n], [n] -> [n], METHODS.md section 1) for a unit
    with normalize_inputs=False, with gradient, from the batch's m embeddings rather than the n
    pairs' 2n copies: each embedding is normalised once, and the v branch's product is taken per
    sample, (W_v f + b_v) / 2, and its two rows added per pair (n = 640 distinct pairs of 256 images
    at 64 x 4: the loss with its gradient 3.45 against 3.75 ms; benchmarks/results/train_step_floor.md).
    Equal to the layer's pair mode up to float rounding."""
    f = l2_normalize(tf.cast(embeddings, pddm.compute_dtype))
    u, u_h, v_h = _pair_branches(pddm, f, _v_halves(pddm, f), a, b)
    return pddm._head(u_h, v_h, safe_norm(u, keepdims=False))


def pddm_quadruplet_terms(pddm: PDDM, loss: DoubleHeaderHingeLoss, embeddings: tf.Tensor,
                          mined: dict[str, Any]) -> dict[str, tf.Tensor]:
    """The double-header hinge loss (METHODS.md section 2) of mined quadruplets, with gradient.

    Scores only the mined pairs with `pddm`, each distinct pair once, and returns the scalars named
    by `PDDM_TERMS`.
    """
    quads = mined["quadruplets"]
    i, j, k, l = tf.unstack(quads.indices, num=4, axis=1)
    s_ij, s_ik, s_jl = tf.split(_distinct_pair_scores(pddm, embeddings, tf.concat([i, i, j], 0),
                                                      tf.concat([j, k, l], 0)), 3)
    terms = loss.quadruplet_terms(embeddings, quadruplet_tuples(quads), tf.concat([s_ij, s_ij], 0),
                                  tf.concat([s_ik, s_jl], 0))
    return {"loss": terms.total, "metric_loss": terms.metric, "embedding_loss": terms.embedding,
            "valid_fraction": quads.valid_fraction(), "score_gap": mined["score_gap"]}


@keras.saving.register_keras_serializable(package="pddm_tf")
class PDDMModel(EmbeddingModel):
    """Hard-quadruplet training with a PDDM unit (METHODS.md sections 1 and 2).

    Each step: embeddings of the global batch -> all-pairs scores (PDDM, or negative squared
    distances for the Euclidean-mining ablation) computed without gradient recording -> quadruplet
    mining -> PDDM scores of only the mined pairs, with gradient -> double-header hinge loss ->
    one update of backbone, head and PDDM together.

    Logged: loss (E_m + lambda E_e), metric_loss (E_m), embedding_loss (E_e), valid_fraction (mined
    quadruplets / sought), score_gap (mean positive - mean negative mining score of the batch).

    XLA: the step keeps a data-dependent number of quadruplets, which XLA cannot compile, so the model
    declares Keras' `supports_jit = False` and the step runs as a plain `tf.function` whatever
    `compile`'s `jit_compile` says (Keras' "auto" picks XLA on a GPU, and would fail there). With
    `compile(jit_compile=True)` the step's fixed-shape part is compiled instead: the all-pairs PDDM
    scores that mining ranks ([m, d] -> [m, m], one XLA program per batch size). Their values
    differ from the uncompiled ones by float rounding only (about 1e-7).

    Args:
      backbone, embedding_dim, dropout: see `EmbeddingModel`.
      pddm: the PDDM layer (default `PDDM()`: raw inputs and the Euclidean prior, see `layers.PDDM`).
      loss: a `DoubleHeaderHingeLoss` (default settings; heads=1 gives PDDM+Triplet); its `mining`
        chooses hardest-per-batch or per-positive-pair quadruplets.
      mining_score: "pddm" (the paper) or "euclidean" (the ablation: mine on -||f_i - f_j||^2, the
        loss still uses PDDM scores).
    """

    metric_names = PDDM_TERMS

    def __init__(self, backbone: keras.Model, embedding_dim: int = 64, pddm: PDDM | None = None,
                 loss: DoubleHeaderHingeLoss | None = None, mining_score: str = "pddm",
                 dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(backbone, embedding_dim=embedding_dim, dropout=dropout, **kwargs)
        if mining_score not in MINING_SCORES:
            raise ValueError(f"unknown mining_score {mining_score!r}; expected one of {MINING_SCORES}")
        self.pddm = pddm if pddm is not None else PDDM(name="pddm")
        self.hinge_loss = loss if loss is not None else DoubleHeaderHingeLoss()
        self.mining_score = mining_score
        self.supports_jit = False
        self.xla_scores = False  # set by compile(jit_compile=True)
        self._compiled_scores: Any = None

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, jit_compile: bool | str = "auto",
                **kwargs: Any) -> None:
        """`EmbeddingModel.compile`; `jit_compile=True` compiles the all-pairs mining scores with XLA
        (see the class docstring), "auto" and False leave them to TensorFlow's kernels."""
        self.xla_scores = jit_compile is True and self.mining_score == "pddm"
        self._compiled_scores = None
        super().compile(optimizer=optimizer, loss=loss, jit_compile=False, **kwargs)
        # Saved as asked, so that a reloaded model compiles its scores again.
        self._compile_config.config["jit_compile"] = jit_compile

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        if not self.pddm.built:
            self.pddm.build((None, self.embedding_dim))

    def similarity(self, embeddings: tf.Tensor) -> tf.Tensor:
        """All-pairs PDDM scores of an embedding batch: [m, d] -> [m, m]."""
        return self.pddm(embeddings)

    def mine(self, embeddings: tf.Tensor, labels: tf.Tensor) -> dict[str, Any]:
        if self.xla_scores and self._compiled_scores is None:
            self._compiled_scores = tf.function(self.pddm.all_pair_scores, jit_compile=True, reduce_retracing=True)
        if self.xla_scores:
            scores = self._compiled_scores
        elif self.pddm.normalize_hidden and not self.pddm.normalize_inputs and type(self.pddm) is PDDM:
            scores = lambda f: _mining_scores(self.pddm, f)  # noqa: E731
        else:
            scores = self.pddm
        return mine_with_pddm(scores, self.hinge_loss, self.mining_score, embeddings, labels)

    def loss_terms(self, embeddings: tf.Tensor, labels: tf.Tensor, mined: dict[str, Any]) -> dict[str, tf.Tensor]:
        return pddm_quadruplet_terms(self.pddm, self.hinge_loss, embeddings, mined)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(pddm=keras.saving.serialize_keras_object(self.pddm),
                      loss=keras.saving.serialize_keras_object(self.hinge_loss),
                      mining_score=self.mining_score)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PDDMModel:
        config = dict(config)
        config["pddm"] = keras.saving.deserialize_keras_object(config["pddm"])
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return super().from_config(config)
