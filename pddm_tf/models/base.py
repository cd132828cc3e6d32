"""Embedding models: the train-step machinery every method shares, and `MetricLossModel`.

`EmbeddingModel` owns what every method shares: backbone -> embedding head, the global-batch
gather under a distribution strategy, the gradient step and the metric trackers. A method
subclasses it and implements two hooks, so models only orchestrate:

  * `mine(embeddings, labels)`: runs without gradient recording (cheap), returns whatever the loss
    needs (e.g. quadruplet indices), or None.
  * `loss_terms(embeddings, labels, mined)`: returns a dict of scalars with the key "loss" (the
    objective) and any other figure to log.

A method whose batches become loss terms in another way overrides the public `batch_terms` (embed,
gather the global batch, mine, `loss_terms`), as Divide-and-Conquer does (one loss per embedding
slice); the train and test steps around it stay shared.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf import _compat
from pddm_tf.evaluation.callbacks import embed_dataset
from pddm_tf.evaluation.index import Index, Lookup, lookups
from pddm_tf.evaluation.search import lookup_queries
from pddm_tf.layers import EmbeddingHead
from pddm_tf.losses import check_embeddings, loss_supports_jit
from pddm_tf.miners import check_labels


def gather_global_batch(embeddings: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Concatenates the batches of all replicas, in replica order, so mining sees the global batch.

    Outside a multi-replica context this is the identity. Inside one, the result's value is the
    global batch [M, d] (M = sum of the replicas' batch sizes), but gradient flows only into this
    replica's own rows, multiplied by the number of replicas R. Every replica computes the same
    global loss L; dividing it by R (as `EmbeddingModel.train_step` does) makes the gradient of
    each replica's embeddings exactly dL/df_local and that of weights used after the gather
    (e.g. PDDM) L/R's, so the strategy's SUM over replicas reproduces single-device gradients.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return embeddings, labels
    replicas = ctx.num_replicas_in_sync
    rows = tf.shape(embeddings)[0]
    # Gathered as a sum of zero-padded blocks: all_reduce works under every strategy, while
    # ReplicaContext.all_gather fails under MultiWorkerMirroredStrategy inside tf.function (TF 2.21:
    # "destinations can not be empty"). Adding zeros is exact, so the values are the replicas' own.
    sizes = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.one_hot(ctx.replica_id_in_sync_group, replicas,
                                                                  dtype=tf.int32) * rows)
    offset = tf.reduce_sum(sizes[: ctx.replica_id_in_sync_group])
    placement = [[offset, tf.reduce_sum(sizes) - offset - rows]]
    all_labels = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.pad(labels, placement))
    gathered = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.pad(tf.stop_gradient(embeddings), placement + [[0, 0]]))
    # Zero in value, identity (times R) in gradient: routes dL/df of our rows back to our backbone.
    local_path = float(replicas) * (embeddings - tf.stop_gradient(embeddings))
    return gathered + tf.pad(local_path, placement + [[0, 0]]), all_labels


class EmbeddingModel(_compat.SymbolicBuildHooks, keras.Model):
    """Backbone -> `EmbeddingHead` (Dense to d, L2-normalised), trained by a metric-learning loss.

    `model(images)` and `model.predict` return the embeddings [n, d]. `fit`/`evaluate` take
    (images [n, s, s, c], labels [n] int) batches; use class-balanced batches so that they contain
    positive pairs (`pddm_tf.data.class_balanced_dataset`). Compile with an optimizer only: the
    model owns its loss.

    Args:
      backbone: a Keras model from images to features [n, k].
      embedding_dim: d.
      dropout: dropout rate before the embedding projection.
      head: the embedding head (default `EmbeddingHead(embedding_dim, dropout)`); not part of the
        config, so a subclass that passes one rebuilds it from its own arguments.
    """

    #: Names of the scalars `loss_terms` returns, in logging order; "loss" first.
    metric_names: tuple[str, ...] = ("loss",)
    #: Whether the train step supports mixed_float16's loss scaling (one optimizer per step; see
    #: `check_loss_scaling`).
    supports_loss_scaling: bool = True
    #: The constructor argument(s) that set the model's loss, named by `compile(loss=...)`'s error.
    loss_arguments: str = "loss"

    def __init__(self, backbone: keras.Model, embedding_dim: int = 64, dropout: float = 0.0,
                 head: EmbeddingHead | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.embedding_dim = int(embedding_dim)
        self.dropout = float(dropout)
        # A subclass may bring its own head (e.g. a sliced one); it is rebuilt from the subclass's config.
        self.head = head if head is not None else EmbeddingHead(embedding_dim, dropout=dropout, name="embedding_head")
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names}

    def build(self, input_shape: Any) -> None:
        # Sub-layers restored by `load_model` arrive built; building them again would add weights.
        if not self.backbone.built:
            self.backbone.build(input_shape)
        if not self.head.built:
            self.head.build(self.backbone.compute_output_shape(input_shape))
        self.built = True

    def build_from_config(self, config: dict[str, Any]) -> None:
        # The saved input shape comes back as a list, which a functional backbone would read as
        # one shape per input.
        if config and config.get("input_shape") is not None:
            self.build(tuple(config["input_shape"]))

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        return self.head(self.backbone(inputs, training=training), training=training)

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, **kwargs: Any) -> None:
        """`keras.Model.compile` without a loss: the model owns its loss, given at construction.

        Raises:
          ValueError: `loss` is not None (Keras would otherwise silently ignore it, since the model's
            `train_step` computes its own loss).
        """
        if loss is not None:
            raise ValueError(f"{type(self).__name__}.compile got loss={loss!r}, but the model's loss is given at "
                             f"construction ({type(self).__name__}(..., {self.loss_arguments}=...)); compile "
                             "takes the optimizer (and metrics) only")
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        # What keras.Model.compile_from_config does, which skips a model whose `compile` is overridden.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, *args: Any, **kwargs: Any) -> keras.callbacks.History:
        """`keras.Model.fit` with `shuffle=False` by default.

        Metric learning trains on class-balanced batches (`pddm_tf.data.class_balanced_dataset`)
        that are already sampled at random: Keras' default `shuffle=True` would be ignored for a
        dataset (with a warning at every call) and would break the P x K batches of arrays.
        """
        kwargs.setdefault("shuffle", False)
        return super().fit(*args, **kwargs)

    # -- retrieval, in the style of TF Similarity ----------------------------------------------

    @property
    def search_index(self) -> Index | None:
        """The `Index` that `index` fills and `lookup` searches (None before the first `index`); assign
        one, e.g. `Index.load(path)`, to search a saved index."""
        return getattr(self, "_search_index", None)

    @search_index.setter
    def search_index(self, index: Index | None) -> None:
        self._search_index = index

    def index(self, x: Any, y: Any = None, batch_size: int = 256) -> Index:
        """Embeds `x` and adds the embeddings (with labels `y`) to the model's `search_index`.

        Args:
          x: images [n, s, s, c] (numpy or tensor), or a finite `tf.data.Dataset` of (images, labels)
            batches, whose labels are used when `y` is None.
          y: [n] labels, or None.
          batch_size: images per forward pass for arrays.

        Returns:
          The index (created on the first call, exact TF search).
        """
        if isinstance(x, tf.data.Dataset):
            embeddings, dataset_labels = embed_dataset(self, x)
            y = dataset_labels if y is None else y
        else:
            embeddings = self.predict(x, batch_size=batch_size, verbose=0)
        if self.search_index is None:
            self.search_index = Index()
        self.search_index.add(embeddings, y)
        return self.search_index

    def lookup(self, x: Any, k: int = 5, batch_size: int = 256) -> list[list[Lookup]]:
        """The k nearest indexed items of every image of `x` (images [n, s, s, c] or a dataset of
        image batches, or of (images, labels) batches): n lists of `Lookup(rank, distance, label,
        index)`, nearest first.

        No image (an empty batch or dataset) gives an empty list.

        Raises:
          ValueError: nothing was indexed yet; a non-integer `k`; images holding NaN or inf (named).
        """
        if self.search_index is None or not len(self.search_index):
            raise ValueError("the model's index is empty: call model.index(x, y) first")
        queries = lookup_queries(self, x, k, batch_size)
        return lookups(self.search_index.search(queries, k)) if len(queries) else []

    def reset_index(self) -> None:
        """Forgets the indexed items."""
        self.search_index = None

    # -- hooks for methods ---------------------------------------------------------------------

    def mine(self, embeddings: tf.Tensor, labels: tf.Tensor) -> Any:
        """Mining on the (stopped) global batch, run outside the gradient tape. Default: none."""
        return None

    def loss_terms(self, embeddings: tf.Tensor, labels: tf.Tensor, mined: Any) -> dict[str, tf.Tensor]:
        raise NotImplementedError("an EmbeddingModel subclass must implement loss_terms")

    # -- shared machinery ----------------------------------------------------------------------

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self._trackers.values())

    def _unpack(self, data: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """(images, labels[, tags]) -> the three; tags (e.g. a batch's cluster id per row) or None."""
        if not isinstance(data, (tuple, list)) or len(data) < 2:
            raise ValueError("training data must be (images, labels) batches")
        images, labels = data[0], data[1]
        if images.shape.rank is not None and images.shape.rank != 4:
            raise ValueError(f"images must have shape [batch, height, width, channels], got {images.shape}")
        tags = data[2] if len(data) > 2 else None
        return images, check_labels(labels), tags

    def batch_terms(self, images: tf.Tensor, labels: tf.Tensor, training: bool, tape: tf.GradientTape | None = None,
                    tags: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """The loss terms of one replica's batch (the hook of the train and test steps): images
        [m, h, w, c] -> embeddings -> the global batch (`gather_global_batch`) -> `mine` outside
        `tape` -> `loss_terms`. `tags` [m] is the optional third element of a batch (e.g. its
        cluster id); override this to turn a batch into loss terms another way."""
        embeddings = check_embeddings(self(images, training=training), labels)
        embeddings, labels = gather_global_batch(embeddings, labels)
        if tape is None:
            mined = self.mine(tf.stop_gradient(embeddings), labels)
        else:
            with tape.stop_recording():
                mined = self.mine(tf.stop_gradient(embeddings), labels)
        return self.loss_terms(embeddings, labels, mined)

    def _objective(self, data: Any, tape: tf.GradientTape) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """A training batch's loss terms and the objective this replica differentiates (under `tape`)."""
        images, labels, tags = self._unpack(data)
        terms = self.batch_terms(images, labels, training=True, tape=tape, tags=tags)
        objective = terms["loss"]
        if self.losses:
            objective += tf.add_n(self.losses)
        # Each replica holds the full global loss; the strategy sums gradients (see gather_global_batch).
        return terms, objective / self.distribute_strategy.num_replicas_in_sync

    def check_loss_scaling(self) -> None:
        """Under the `mixed_float16` policy Keras' `compile` wraps the optimizer in a
        `keras.optimizers.LossScaleOptimizer` and `train_step` scales the objective through it
        (`optimizer.scale_loss`), as Keras' own step does; `mixed_bfloat16` needs no scaling.

        Raises:
          ValueError: `mixed_float16` for a model whose step runs several optimizers (HDML,
            Divide-and-Conquer), which one loss scale cannot serve: use `mixed_bfloat16`.
        """
        if self.dtype_policy.name == "mixed_float16" and not self.supports_loss_scaling:
            raise ValueError(f"{type(self).__name__} does not support the mixed_float16 policy: its step runs "
                             "several optimizers, which one loss scale cannot serve; use mixed_bfloat16")

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            terms, objective = self._objective(data, tape)
            # The identity except under mixed_float16, where the LossScaleOptimizer multiplies the objective
            # by its loss scale (and apply_gradients divides the gradients by it, skipping non-finite steps).
            objective = self.optimizer.scale_loss(objective)
        variables = self.trainable_variables
        gradients = tape.gradient(objective, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._record(terms)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        images, labels, tags = self._unpack(data)
        return self._record(self.batch_terms(images, labels, training=False, tags=tags))

    def _record(self, terms: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, tracker in self._trackers.items():
            tracker.update_state(terms[name])
        logs = {name: tracker.result() for name, tracker in self._trackers.items()}
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras (3.15) reduces the logs of a multi-worker step with reduce(MEAN, axis=0), which
            # rejects scalars; [1] values reduce to the (replica-identical) scalar.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "embedding_dim": self.embedding_dim,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EmbeddingModel:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="pddm_tf")
class MetricLossModel(EmbeddingModel):
    """Backbone -> head trained with any embedding loss `loss(labels [m], embeddings [m, d])`.

    The loss sees the global batch (see `gather_global_batch`) and does its own mining from
    distances, which is cheap enough to keep inside the gradient tape. A loss with trainable
    parameters (e.g. the margin loss's beta) exposes them as `loss.variables`; they are tracked here
    and trained with the network.

    Args:
      backbone, embedding_dim, dropout: see `EmbeddingModel`.
      loss: a Keras loss taking (labels, embeddings), e.g. from `pddm_tf.losses`.
    """

    def __init__(self, backbone: keras.Model, loss: keras.losses.Loss, embedding_dim: int = 64,
                 dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(backbone, embedding_dim=embedding_dim, dropout=dropout, **kwargs)
        self.embedding_loss = loss
        # Keras' own switch: a step XLA cannot compile then runs as a plain tf.function, which
        # jit_compile="auto" (True on a GPU) would otherwise fail on at the first batch.
        self.supports_jit = loss_supports_jit(loss)
        # Assigning the list makes Keras track the loss's variables as the model's weights.
        self.loss_variables = list(getattr(loss, "variables", []))

    def loss_terms(self, embeddings: tf.Tensor, labels: tf.Tensor, mined: Any) -> dict[str, tf.Tensor]:
        return {"loss": self.embedding_loss(labels, embeddings)}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(loss=keras.saving.serialize_keras_object(self.embedding_loss))
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MetricLossModel:
        config = dict(config)
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return super().from_config(config)
