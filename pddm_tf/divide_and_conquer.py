"""Divide-and-Conquer the embedding space (Sanakoyeu et al., CVPR 2019), METHODS.md section 4.

`DivideAndConquerModel` is an `EmbeddingModel` whose head is a `SlicedEmbeddingHead` with K
learners. A training batch comes from one cluster (`pddm_tf.clustering.cluster_balanced_dataset`
tags it with the cluster id k) and trains only learner k: the loss sees slice k of the global
batch's projection, L2-normalised on its own, so the gradient reaches the backbone and the kernel
columns of slice k only. Batches tagged `CONQUER` (and untagged batches) train the whole
normalised embedding. The `DivideAndConquer` callback runs the clustering schedule.

Every learner has its own copy of the loss (its own margin beta, its own PDDM unit scoring its
slice), plus one for the whole embedding; with K = 1 learner 0 *is* the whole embedding and shares
the conquer learner's loss, so the model reduces exactly to `MetricLossModel` / `PDDMModel`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras
import tensorflow as tf

from pddm_tf.clustering import CONQUER
from pddm_tf.distances import l2_normalize
from pddm_tf.layers import PDDM, SlicedEmbeddingHead
from pddm_tf.losses import DoubleHeaderHingeLoss, MarginLoss, check_embeddings
from pddm_tf.models import PDDM_TERMS, EmbeddingModel, gather_global_batch, mine_with_pddm, pddm_quadruplet_terms


def _clone(loss: keras.losses.Loss) -> keras.losses.Loss:
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))


@keras.saving.register_keras_serializable(package="pddm_tf")
class DivideAndConquerModel(EmbeddingModel):
    """K learners on K slices of one embedding, each trained on its cluster's batches.

    `model(images)` returns the whole embedding [n, d], L2-normalised (for retrieval and export).
    `fit` takes (images, labels, tags) batches from `cluster_balanced_dataset`; tags [n] holds the
    batch's cluster id (the same in every row) or `CONQUER`. (images, labels) batches train and
    evaluate the whole embedding.

    Args:
      backbone: images -> features [n, k].
      embedding_dim: d, divisible by `num_learners`.
      num_learners: K; each learner owns d / K dimensions.
      loss: the per-learner loss, copied for each learner and for the whole embedding: any
        embedding loss of `pddm_tf.losses` called as `loss(labels, embeddings)` (default: the margin
        loss with distance-weighted sampling and the authors' fixed beta = 1.2), or a
        `DoubleHeaderHingeLoss`, in which case each learner gets its own PDDM unit scoring its slice
        (hard-quadruplet mining on that slice) and `model.pddm` scores the whole embedding.
      mining_score: with a `DoubleHeaderHingeLoss`, "pddm" or "euclidean" (see `PDDMModel`).
      dropout: dropout before the projection.
    """

    def __init__(self, backbone: keras.Model, embedding_dim: int = 64, num_learners: int = 4,
                 loss: keras.losses.Loss | None = None, mining_score: str = "pddm", dropout: float = 0.0,
                 **kwargs: Any) -> None:
        head = SlicedEmbeddingHead(embedding_dim, num_slices=num_learners, dropout=dropout, name="embedding_head")
        super().__init__(backbone, embedding_dim=embedding_dim, dropout=dropout, head=head, **kwargs)
        self.num_learners = int(num_learners)
        self.prototype_loss = loss if loss is not None else MarginLoss(learn_beta=False)
        self.mining_score = mining_score
        self.uses_pddm = isinstance(self.prototype_loss, DoubleHeaderHingeLoss)
        # Index K is the whole embedding (conquer); with K = 1 it is learner 0 itself.
        whole = self.prototype_loss
        self.learner_losses = [_clone(whole) for _ in range(num_learners)] if num_learners > 1 else [whole]
        self.learner_losses.append(whole)
        if self.uses_pddm:
            self.pddm = PDDM(name="pddm")
            self.learner_pddms = [PDDM(name=f"pddm_learner{k}") for k in range(num_learners)] if num_learners > 1 else []
        # Listing the losses' variables makes Keras track (and train) e.g. a learnable margin beta.
        self.loss_variables = [v for loss_ in self._distinct_losses() for v in getattr(loss_, "variables", [])]
        self.metric_names = PDDM_TERMS if self.uses_pddm else ("loss",)
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}

    def _distinct_losses(self) -> list[keras.losses.Loss]:
        return self.learner_losses[:-1] if self.num_learners == 1 else self.learner_losses

    def _pddm_of(self, learner: int) -> PDDM:
        """The PDDM unit that scores learner k's embeddings (k = K: the whole embedding's)."""
        return self.pddm if learner == self.num_learners or self.num_learners == 1 else self.learner_pddms[learner]

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        if self.uses_pddm:
            # Built here, not lazily inside a traced train step.
            for k in range(self.num_learners + 1):
                if not self._pddm_of(k).built:
                    dim = self.embedding_dim if k == self.num_learners else self.head.slice_dim
                    self._pddm_of(k).build((None, dim))

    def similarity(self, embeddings: tf.Tensor) -> tf.Tensor:
        """All-pairs PDDM scores of whole embeddings [m, d] -> [m, m] (PDDM learners only)."""
        if not self.uses_pddm:
            raise ValueError("similarity needs a DivideAndConquerModel trained with a DoubleHeaderHingeLoss")
        return self.pddm(embeddings)

    def learner_embedding(self, projection: tf.Tensor, learner: int) -> tf.Tensor:
        """Learner k's embedding (slice k, normalised) or, for k = K, the whole one: [n, d] -> [n, d/K or d]."""
        if learner == self.num_learners:
            return l2_normalize(projection)
        return self.head.slice(projection, learner)

    def _learners(self) -> list[int]:
        """The learners whose losses differ: 0..K-1 and K (the whole embedding); just 0 when K = 1."""
        return [0] if self.num_learners == 1 else list(range(self.num_learners + 1))

    def _forward(self, images: tf.Tensor, labels: tf.Tensor, training: bool, tape: tf.GradientTape | None = None,
                 tags: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        projection = self.head.project(self.backbone(images, training=training), training=training)
        projection = check_embeddings(projection, labels)
        projection, labels = gather_global_batch(projection, labels)
        learner = self._learner_of(tags)
        embeddings = [self.learner_embedding(projection, k) for k in self._learners()]
        mined: list[Any] = [None] * len(embeddings)
        if self.uses_pddm:
            with tape.stop_recording() if tape is not None else contextlib.nullcontext():
                mined = [mine_with_pddm(self._pddm_of(k), self.learner_losses[k], self.mining_score,
                                        tf.stop_gradient(e), labels) for k, e in zip(self._learners(), embeddings)]
        # Every learner's loss is evaluated (a few small [m, m] computations each) and the batch's one is
        # picked: gathering passes exact zeros back to the others, so only the batch's slice (and its
        # loss parameters / PDDM unit) is trained, with one graph and no branches to compile.
        terms = [self._learner_terms(k, e, labels, m) for k, e, m in zip(self._learners(), embeddings, mined)]
        return {name: tf.gather(tf.stack([t[name] for t in terms]), learner) for name in self.metric_names}

    def _learner_of(self, tags: tf.Tensor | None) -> tf.Tensor:
        """Index into `_learners()` of the learner a batch trains: its cluster tag, or K for CONQUER/untagged."""
        whole = 0 if self.num_learners == 1 else self.num_learners
        if tags is None:
            return tf.constant(whole, tf.int32)
        tag = tf.cast(tf.reshape(tags, [-1])[0], tf.int32)
        checks = [tf.debugging.assert_less(tag, self.num_learners, message="a batch's cluster tag is >= K"),
                  tf.debugging.assert_greater_equal(tag, CONQUER, message="a batch's cluster tag is < -1")]
        with tf.control_dependencies(checks):
            return tf.where(tf.equal(tag, CONQUER), whole, tag)

    def _learner_terms(self, learner: int, embeddings: tf.Tensor, labels: tf.Tensor,
                       mined: Any) -> dict[str, tf.Tensor]:
        loss = self.learner_losses[learner]
        if not self.uses_pddm:
            return {"loss": loss(labels, embeddings)}
        return pddm_quadruplet_terms(self._pddm_of(learner), loss, embeddings, mined)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_learners=self.num_learners, loss=keras.saving.serialize_keras_object(self.prototype_loss),
                      mining_score=self.mining_score)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DivideAndConquerModel:
        config = dict(config)
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return super().from_config(config)
