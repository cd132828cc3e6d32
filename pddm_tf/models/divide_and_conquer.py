"""Divide-and-Conquer the embedding space (Sanakoyeu et al., CVPR 2019), METHODS.md section 4.

`DivideAndConquerModel` is an `EmbeddingModel` whose head is a `SlicedEmbeddingHead` with K
learners. A training batch comes from one cluster (`pddm_tf.models.clustering.cluster_balanced_dataset`
tags it with the cluster id k) and trains only learner k: the loss sees slice k of the global
batch's projection, L2-normalised on its own, so the gradient reaches the backbone and the kernel
columns of slice k only. Batches tagged `CONQUER` (and untagged batches) train the whole
normalised embedding. The `DivideAndConquer` callback runs the clustering schedule.

Every learner has its own copy of the loss (its own margin beta, its own PDDM unit scoring its
slice), plus one for the whole embedding; with K = 1 learner 0 *is* the whole embedding and shares
the conquer learner's loss, so the model reduces exactly to `MetricLossModel` / `PDDMModel`.

A learner whose cluster is not in the batch does not move: its gradients are exact zeros, but a
stateful optimiser (Adam's momentum, AdamW's decoupled decay) would still move it. Each learner's
own parameters (its projection layer, PDDM unit and loss variables) therefore have their own
optimiser, a copy of the compiled one (same class and settings, e.g. AdamW's weight decay), whose
update is kept only on the steps that train that learner (see `DivideAndConquerModel.train_step`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from pddm_tf import _compat
from pddm_tf.layers import PDDM, SlicedEmbeddingHead
from pddm_tf.losses import DoubleHeaderHingeLoss, MarginLoss, check_embeddings, loss_supports_jit
from pddm_tf.models.base import EmbeddingModel, gather_global_batch
from pddm_tf.models.clustering import CONQUER
from pddm_tf.models.pddm import PDDM_TERMS, mine_with_pddm, pddm_quadruplet_terms


def _clone(loss: keras.losses.Loss) -> keras.losses.Loss:
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))


@keras.saving.register_keras_serializable(package="pddm_tf")
class DivideAndConquerModel(EmbeddingModel):
    """K learners on K slices of one embedding, each trained on its cluster's batches.

    `model(images)` returns the whole embedding [n, d] of the authors' forward pass: every learner's
    slice L2-normalised on its own, concatenated, divided by sqrt(K) to unit norm
    (`SlicedEmbeddingHead.whole`; METHODS.md section 7). Evaluation, the conquer phase, export and
    search all use it. `fit` takes (images, labels, tags) batches from `cluster_balanced_dataset`; tags [n] holds the
    batch's cluster id (the same in every row) or `CONQUER`. (images, labels) batches train and
    evaluate the whole embedding.

    Args:
      backbone: images -> features [n, k].
      embedding_dim: d, divisible by `num_learners`.
      num_learners: K; each learner owns d / K dimensions.
      loss: the per-learner loss, copied for each learner and for the whole embedding: any
        embedding loss of `pddm_tf.losses` called as `loss(labels, embeddings)` (default: the margin
        loss with the authors' sampler and fixed beta = 1.2,
        `MarginLoss(learn_beta=False, miner="closest_beyond_cutoff")`), or a
        `DoubleHeaderHingeLoss`, in which case each learner gets its own PDDM unit scoring its slice
        (hard-quadruplet mining on that slice) and `model.pddm` scores the whole embedding.
      mining_score: with a `DoubleHeaderHingeLoss`, "pddm" or "euclidean" (see `PDDMModel`).
      dropout: dropout before the projection.
      pddm_normalize_inputs: with a `DoubleHeaderHingeLoss`, the PDDM units' `normalize_inputs`
        (default raw inputs, as every PDDM unit of the library: METHODS.md section 1).

    Optimisers: `compile(optimizer=...)` sets the optimiser of the shared parameters (the
    backbone) and, with K > 1, makes `learner_optimizers`, K + 1 copies of it (learner k's own
    parameters; index K: the whole embedding's PDDM unit and loss variables): same class and
    settings (e.g. AdamW's weight decay), learning rate read from the shared optimiser at the
    training step (so a warm-up or cosine schedule runs on the global step). Copy k's update is
    applied on the batches that train learner k (its cluster's, and the conquer batches for
    k < K) and undone, with its optimiser state, on the others, so a learner stands still, and its
    Adam moments and step count wait, while other clusters train. All optimisers are saved with
    the model's weights.
    """

    supports_loss_scaling = False  # the learners' optimizers (mixed_bfloat16 works)

    def __init__(self, backbone: keras.Model, embedding_dim: int = 64, num_learners: int = 4,
                 loss: keras.losses.Loss | None = None, mining_score: str = "pddm", dropout: float = 0.0,
                 pddm_normalize_inputs: bool = False, **kwargs: Any) -> None:
        head = SlicedEmbeddingHead(embedding_dim, num_slices=num_learners, dropout=dropout, name="embedding_head")
        super().__init__(backbone, embedding_dim=embedding_dim, dropout=dropout, head=head, **kwargs)
        self.num_learners = int(num_learners)
        if loss is None:
            loss = MarginLoss(learn_beta=False, miner="closest_beyond_cutoff")
        self.prototype_loss = loss
        self.mining_score = mining_score
        self.pddm_normalize_inputs = bool(pddm_normalize_inputs)
        self.uses_pddm = isinstance(self.prototype_loss, DoubleHeaderHingeLoss)
        # Index K is the whole embedding (conquer); with K = 1 it is learner 0 itself.
        whole = self.prototype_loss
        self.learner_losses = [_clone(whole) for _ in range(num_learners)] if num_learners > 1 else [whole]
        self.learner_losses.append(whole)
        if self.uses_pddm:
            self.pddm = PDDM(normalize_inputs=pddm_normalize_inputs, name="pddm")
            self.learner_pddms = ([PDDM(normalize_inputs=pddm_normalize_inputs, name=f"pddm_learner{k}")
                                   for k in range(num_learners)]
                                  if num_learners > 1 else [])
        self.supports_jit = all(loss_supports_jit(loss_) for loss_ in self.learner_losses)  # as MetricLossModel
        # Listing the losses' variables makes Keras track (and train) e.g. a learnable margin beta.
        self.loss_variables = [v for loss_ in self._distinct_losses() for v in getattr(loss_, "variables", [])]
        self.metric_names = PDDM_TERMS if self.uses_pddm else ("loss",)
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}
        self.learner_optimizers: list[keras.optimizers.Optimizer] = []

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
        if tf.executing_eagerly():  # not while Keras traces the model symbolically (see _after_symbolic_build)
            self._build_optimizers()

    def _after_symbolic_build(self) -> None:
        # `fit` of an unbuilt model builds it from a traced call, where no optimiser can be built.
        self._build_optimizers()

    # -- optimisers ------------------------------------------------------------------------------

    def compile(self, *args: Any, **kwargs: Any) -> None:
        self.check_loss_scaling()
        super().compile(*args, **kwargs)
        if self.num_learners == 1 or self.optimizer is None:
            return
        shared = self.optimizer

        def shared_learning_rate() -> Any:
            # The shared optimiser's rate at its (global) step: a schedule (warm-up, cosine) runs on the
            # training step, not on a learner's own count, which only Adam's bias correction uses.
            return shared.learning_rate

        config = shared.get_config()
        config["learning_rate"] = shared_learning_rate
        with self.distribute_strategy.scope():
            self.learner_optimizers = [
                type(shared).from_config({**config, "name": f"learner{k}_optimizer" if k < self.num_learners
                                          else "whole_embedding_optimizer"})
                for k in range(self.num_learners + 1)]
        if self.built:
            self._build_optimizers()

    def compile_from_config(self, config: dict[str, Any]) -> None:
        # Keras skips a custom `compile` when loading a model; this one only adds the learners' copies.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self._build_optimizers()

    def learner_variables(self, learner: int) -> list[keras.Variable]:
        """Learner k's own trainable variables: its projection layer, PDDM unit and loss variables
        (k = K: the whole embedding's PDDM unit and loss variables)."""
        own = [] if learner == self.num_learners else list(self.head.slice_layer(learner).trainable_variables)
        if self.uses_pddm:
            own += self._pddm_of(learner).trainable_variables
        loss = self.learner_losses[learner]
        return own + [v for v in getattr(loss, "variables", []) if v.trainable]

    def shared_variables(self) -> list[keras.Variable]:
        """The trainable variables no learner owns (the backbone's): every batch trains them."""
        if not self.learner_optimizers:
            return list(self.trainable_variables)
        owned = {id(v) for k in range(self.num_learners + 1) for v in self.learner_variables(k)}
        return [v for v in self.trainable_variables if id(v) not in owned]

    def _build_optimizers(self, scoped: bool = True) -> None:
        # Built here, not lazily in the first step: their slots must exist before a checkpoint is
        # restored, and variables cannot be created inside a replica context.
        if not self.learner_optimizers:
            return
        with self.distribute_strategy.scope() if scoped else contextlib.nullcontext():
            if not self.optimizer.built:
                # On all trainable variables, as Keras builds it when restoring (the learners' slots
                # in it stay unused), so saved and restored slots always match.
                self.optimizer.build(self.trainable_variables)
            for k, optimizer in enumerate(self.learner_optimizers):
                if not optimizer.built:
                    optimizer.build(self.learner_variables(k))

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One step; with K > 1 the backbone by the compiled optimiser and every learner by its own,
        whose update (and state change) is kept only if the batch trains that learner."""
        self.check_loss_scaling()
        if not self.learner_optimizers:
            return super().train_step(data)
        with tf.GradientTape() as tape:
            terms, objective = self._objective(data, tape)
        if not all(o.built for o in self.learner_optimizers):
            # Only without a distribution strategy does Keras leave an unbuilt model to the first traced
            # step (see _after_symbolic_build); its variables can then be created here, as Keras' own are.
            self._build_optimizers(scoped=False)
        groups = [self.shared_variables()] + [self.learner_variables(k) for k in range(self.num_learners + 1)]
        gradients = tape.gradient(objective, [v for group in groups for v in group])
        learner = self._learner_of(self._unpack(data)[2])
        conquer = tf.equal(learner, self.num_learners)
        shared = len(groups[0])
        start = shared
        # The learners first: their learning rate is the shared optimiser's at this step, before it counts it.
        for k, (optimizer, variables) in enumerate(zip(self.learner_optimizers, groups[1:])):
            trained = tf.logical_or(tf.equal(learner, k), conquer) if k < self.num_learners else conquer
            _apply_if(trained, optimizer, gradients[start:start + len(variables)], variables)
            start += len(variables)
        if groups[0]:
            self.optimizer.apply_gradients(zip(gradients[:shared], groups[0]))
        else:  # a frozen backbone: the step counter (the sampler position) still counts the step
            self.optimizer.iterations.assign_add(1)
        return self._record(terms)

    def similarity(self, embeddings: tf.Tensor) -> tf.Tensor:
        """All-pairs PDDM scores of whole embeddings [m, d] -> [m, m] (PDDM learners only)."""
        if not self.uses_pddm:
            raise ValueError("similarity needs a DivideAndConquerModel trained with a DoubleHeaderHingeLoss")
        return self.pddm(embeddings)

    def learner_embedding(self, projection: tf.Tensor, learner: int) -> tf.Tensor:
        """Learner k's embedding (slice k, normalised) or, for k = K, the whole one (slices normalised on
        their own, concatenated, / sqrt(K)): [n, d] -> [n, d/K or d]."""
        if learner == self.num_learners:
            return self.head.whole(projection)
        return self.head.slice(projection, learner)

    def _learners(self) -> list[int]:
        """The learners whose losses differ: 0..K-1 and K (the whole embedding); just 0 when K = 1."""
        return [0] if self.num_learners == 1 else list(range(self.num_learners + 1))

    def batch_terms(self, images: tf.Tensor, labels: tf.Tensor, training: bool, tape: tf.GradientTape | None = None,
                    tags: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """`EmbeddingModel.batch_terms` for K learners: every learner's loss on its own slice, the
        batch's learner (its cluster tag) picked."""
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
                      mining_score=self.mining_score, pddm_normalize_inputs=self.pddm_normalize_inputs)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DivideAndConquerModel:
        config = dict(config)
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return super().from_config(config)


def _apply_if(condition: tf.Tensor, optimizer: keras.optimizers.Optimizer, gradients: Sequence[tf.Tensor],
              variables: Sequence[keras.Variable]) -> None:
    """`optimizer.apply_gradients`, kept only where `condition` (a scalar bool, the same on every replica).

    The update is applied unconditionally and then undone, together with every optimiser variable
    (moments, step count), when `condition` is false: a `tf.cond` around it would put the
    optimiser's cross-replica merge inside a branch, which distribution strategies do not allow.
    """
    if not variables:
        return
    state = [v.value if isinstance(v, keras.Variable) else v for v in [*variables, *optimizer.variables]]
    saved = [tf.identity(v) for v in state]  # read before the update (automatic control dependencies)
    optimizer.apply_gradients(zip(gradients, variables))

    def restore(strategy: tf.distribute.Strategy, saved: list[Any], condition: Any) -> None:
        def keep_or_restore(variable: tf.Variable, old: tf.Tensor, keep: tf.Tensor) -> Any:
            return variable.assign(tf.where(keep, variable, old))

        for variable, old in zip(state, saved):
            strategy.extended.update(variable, keep_or_restore, args=(old, condition), group=False)

    # Mirrored variables can only be assigned in a cross-replica context, as Keras applies weight decay.
    _compat.maybe_merge_call(restore, tf.distribute.get_strategy(), saved, condition)
