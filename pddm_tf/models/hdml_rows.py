"""`HDMLModel`'s bookkeeping: its running means (block means of the weighted real metric loss and of
J_gen, with the calibration of alpha), the rows it synthesises negatives for, the base loss J_m on
them and its three parameter groups (METHODS.md sections 3 and 7)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from pddm_tf.layers import PDDM, EmbeddingHead
from pddm_tf.losses import DoubleHeaderHingeLoss, TripletLoss
from pddm_tf.miners import Tuples, npair_tuples
from pddm_tf.miners.mining import npair_pairs, pair_masks
from pddm_tf.models.hdml_config import HardnessSchedule
from pddm_tf.models.hdml_ops import npairs_loss


class HDMLBookkeeping:
    """Mixin of `HDMLModel` (a Keras model): its running means, rows, base loss and parameter groups."""

    base: str
    seed: int
    hardness: HardnessSchedule
    running_means: keras.Variable
    block_sums: keras.Variable
    block_steps: keras.Variable
    alpha_in_use: keras.Variable
    generator_optimizer: keras.optimizers.Optimizer
    backbone: keras.Model
    head: EmbeddingHead
    generator: keras.Sequential | None
    classifier: keras.layers.Dense
    pddm: PDDM | None
    pddm_loss: DoubleHeaderHingeLoss | None
    normalize_embeddings: bool
    npair_reg: float
    _triplet_loss: TripletLoss

    # -- running means ---------------------------------------------------------------------------

    @property
    def j_avg(self) -> tf.Tensor:
        """Mean weighted real metric loss w J_m(real) of the last complete block (the interpolation's J_avg)."""
        return tf.convert_to_tensor(self.running_means)[0]

    @property
    def j_gen_avg(self) -> tf.Tensor:
        """Mean J_gen of the last complete block."""
        return tf.convert_to_tensor(self.running_means)[1]

    def _update_running_means(self, weighted_metric_loss: tf.Tensor, generator_loss: tf.Tensor) -> None:
        """Adds this step's values to the block; at its `window`-th step, the block means replace the
        running means (and, uncalibrated, alpha is set from the first one)."""
        values = tf.stop_gradient(tf.stack([weighted_metric_loss, generator_loss]))
        sums = tf.convert_to_tensor(self.block_sums) + values
        steps = tf.convert_to_tensor(self.block_steps) + 1.0
        window = self.hardness.window
        complete = steps >= window
        means = sums / window
        self.running_means.assign(tf.where(complete, means, self.running_means))
        self.block_sums.assign(tf.where(complete, tf.zeros_like(sums), sums))
        self.block_steps.assign(tf.where(complete, 0.0, steps))
        if self.hardness.alpha is None:
            calibrate = complete & tf.equal(self.alpha_in_use, 0.0)
            alpha = -math.log(self.hardness.initial_easiness) * means[0]
            self.alpha_in_use.assign(tf.where(calibrate, alpha, self.alpha_in_use))


    # -- rows and losses -------------------------------------------------------------------------

    def _triplets(self, labels: tf.Tensor) -> Tuples:
        """The rows HDML synthesises negatives for. "npair": `NPairMiner`'s N^2 rows. "triplet" and
        "pddm": `QuadrupletMiner`'s layout (row r < q is (i, j, k) for the positive pair i < j, row
        q + r is (j, i, l)) with k and l drawn uniformly among the negatives (the authors' sampler)."""
        if self.base == "npair":
            return npair_tuples(npair_pairs(labels))
        positive, negative = pair_masks(labels)
        has_negative = tf.reduce_any(negative, axis=1)
        upper = tf.linalg.band_part(tf.ones_like(positive, dtype=tf.int32), 0, -1) > 0
        eligible = positive & upper & has_negative[:, None] & has_negative[None, :]
        pairs = tf.cast(tf.where(eligible), tf.int32)  # [q, 2], i < j
        anchors = tf.concat([pairs[:, 0], pairs[:, 1]], axis=0)
        positives = tf.concat([pairs[:, 1], pairs[:, 0]], axis=0)
        # Uniform draw among the anchor's negatives; the seed moves with the step and is the same on
        # every replica, so they all build the same rows.
        logits = tf.where(tf.gather(negative, anchors), 0.0, -1e9)
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.generator_optimizer.iterations, tf.int64)])
        negatives = tf.random.stateless_categorical(logits, 1, seed, dtype=tf.int32)[:, 0]
        return Tuples(anchors, positives, negatives, tf.shape(pairs)[0])

    # -- parameter groups ------------------------------------------------------------------------

    def parameter_groups(self) -> dict[str, list[keras.Variable]]:
        """Trainable variables of the metric network, the generator and the classifier."""
        if self.generator is None:
            raise RuntimeError("HDMLModel.parameter_groups needs a built model (the generator is built in `build`)")
        metric = self.backbone.trainable_variables + self.head.trainable_variables
        if self.pddm is not None:
            metric += self.pddm.trainable_variables
        return {"metric": metric, "generator": self.generator.trainable_variables,
                "classifier": self.classifier.trainable_variables}

    def _metric_loss(self, rows: Tuples, anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tf.Tensor:
        """J_m of the base loss on [t, d] row embeddings laid out as `rows` describes: the public
        `from_embeddings` of `NPairLoss`, `TripletLoss` and `DoubleHeaderHingeLoss`."""
        if self.base == "npair":
            # Row i N + j holds anchor i and its j-th candidate (NPairMiner's layout).
            n = rows.groups
            return npairs_loss(tf.gather(anchor, tf.range(n) * n), tf.reshape(negative, [n, n, -1]), self.npair_reg)
        if self.base == "triplet":
            return self._triplet_loss.from_embeddings(anchor, positive, negative)
        # pddm: rows r and q + r are the two halves (i, j, k) and (j, i, l) of one quadruplet.
        assert self.pddm is not None and self.pddm_loss is not None  # base "pddm" sets both
        scores = self.pddm((tf.concat([anchor, anchor], 0), tf.concat([positive, negative], 0)))
        s_ap, s_an = tf.split(scores, 2)
        return self.pddm_loss.from_embeddings(anchor, positive, negative, rows.groups, s_ap, s_an).total

    def _embed(self, features: tf.Tensor, training: bool) -> tf.Tensor:
        """z of features [n, k]: the head's projection [n, d], L2-normalised if `normalize_embeddings`."""
        if self.normalize_embeddings:
            return self.head(features, training=training)
        return self.head.project(features, training=training)

    def _gather_rows(self, rows: Tuples, embeddings: tf.Tensor) -> list[tf.Tensor]:
        return [tf.gather(embeddings, indices) for indices in (rows.anchors, rows.positives, rows.negatives)]
