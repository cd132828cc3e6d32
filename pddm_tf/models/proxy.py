"""`ProxyLossModel`: a `MetricLossModel` whose loss owns proxies trained at their own learning rate.

The proxy papers train the proxies faster than the network (Proxy-Anchor: 100 x, the authors'
`param_groups`; SoftTriple: centres at 1e-2 against 1e-4). PyTorch does it with parameter groups;
here, as in Keras' GAN guide (one optimiser per group of variables, given to `compile`), the model
has a second optimiser, `proxy_optimizer`, for the loss's `proxy_variables`. By default it is a copy
of the compiled optimiser (same class and settings, weight decay included) whose learning rate, or
learning-rate schedule, is multiplied by the loss's `lr_multiplier`. It is an attribute of the model,
so its slots and step counter are saved with the model's weights and restored by
`pddm_tf.BackupAndRestore` (a killed run resumes bit-exactly).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pddm_tf.models.base import MetricLossModel


@keras.saving.register_keras_serializable(package="pddm_tf")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`scale * schedule(step)`: the proxies' schedule when the network's learning rate is one."""

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule | dict[str, Any],
                 scale: float) -> None:
        self.schedule = (keras.saving.deserialize_keras_object(schedule) if isinstance(schedule, dict)
                         else schedule)
        self.scale = float(scale)

    def __call__(self, step):
        return self.schedule(step) * self.scale

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "scale": self.scale}


def scaled_copy(optimizer: keras.optimizers.Optimizer, multiplier: float, name: str) -> keras.optimizers.Optimizer:
    """A new optimiser of `optimizer`'s class and settings, its learning rate (a number or a schedule)
    times `multiplier`, without a weight average (the compiled optimiser's average covers every
    trainable variable, the proxies included: see `ProxyLossModel.build_optimizers`)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError("ProxyLossModel does not support the mixed_float16 policy (two optimizers, one loss "
                         "scale); use mixed_bfloat16")
    config = optimizer.get_config()
    rate = config["learning_rate"]
    if isinstance(rate, (dict, keras.optimizers.schedules.LearningRateSchedule)):  # a schedule, or its config
        config["learning_rate"] = ScaledSchedule(rate, multiplier)
    else:
        config["learning_rate"] = float(rate) * multiplier
    config.update(name=name, use_ema=False)
    return type(optimizer).from_config(config)


@keras.saving.register_keras_serializable(package="pddm_tf")
class ProxyLossModel(MetricLossModel):
    """Backbone -> head trained with a proxy loss (`pddm_tf.losses.ProxyLoss`: Proxy-Anchor, ProxyNCA,
    normalized softmax, SoftTriple, ArcFace, CosFace, SubCenter-ArcFace).

    Everything is `MetricLossModel`'s (global batch under a strategy, the loss's variables tracked
    as weights), except the step: the proxies (`loss.proxy_variables`) are updated by
    `proxy_optimizer`, the other trainable variables by the compiled optimiser. `compile(optimizer,
    proxy_optimizer=None)`: None makes `proxy_optimizer` a copy of `optimizer` at
    `loss.lr_multiplier` times its learning rate (`scaled_copy`); under a strategy, compile in its scope.
    A given `proxy_optimizer` is not part of the saved compile config (a loaded model gets the copy).

    Args:
      backbone, loss, embedding_dim, dropout: see `MetricLossModel`.
    """

    supports_loss_scaling = False  # two optimizers per step (mixed_bfloat16 works)

    def __init__(self, backbone: keras.Model, loss: keras.losses.Loss, embedding_dim: int = 64,
                 dropout: float = 0.0, **kwargs: Any) -> None:
        if not hasattr(loss, "proxy_variables"):
            raise ValueError(f"ProxyLossModel needs a loss with proxies (pddm_tf.losses.ProxyLoss), got "
                             f"{type(loss).__name__}; use MetricLossModel")
        super().__init__(backbone, loss, embedding_dim=embedding_dim, dropout=dropout, **kwargs)
        self.proxy_optimizer: keras.optimizers.Optimizer | None = None

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, proxy_optimizer: Any = None,
                **kwargs: Any) -> None:
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        self.check_loss_scaling()
        if proxy_optimizer is None:
            proxy_optimizer = scaled_copy(self.optimizer, self.embedding_loss.lr_multiplier, "proxy_optimizer")
        self.proxy_optimizer = keras.optimizers.get(proxy_optimizer)
        if self.built:
            self.build_optimizers()

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        if getattr(self, "proxy_optimizer", None) is not None:
            self.build_optimizers()

    def build_optimizers(self) -> None:
        """Builds both optimisers (their slots must exist before a checkpoint is restored, and cannot
        be created inside a replica context): the compiled one on every trainable variable, as Keras
        builds it when it restores one (the proxies' slots in it stay unused, but its weight average,
        if any, covers them); `proxy_optimizer` on the proxies."""
        if self.proxy_optimizer is None:
            raise ValueError("ProxyLossModel must be compiled before its optimizers are built")
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        if not self.proxy_optimizer.built:
            self.proxy_optimizer.build(list(self.embedding_loss.proxy_variables))

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            terms, objective = self._objective(data, tape)
        if self.proxy_optimizer is None:
            raise ValueError("ProxyLossModel must be compiled before training")
        if not (self.optimizer.built and self.proxy_optimizer.built):
            self.build_optimizers()
        variables = self.trainable_variables
        gradients = tape.gradient(objective, variables)
        proxies = {id(v) for v in self.embedding_loss.proxy_variables}
        network = [(g, v) for g, v in zip(gradients, variables) if id(v) not in proxies]
        own = [(g, v) for g, v in zip(gradients, variables) if id(v) in proxies]
        self.optimizer.apply_gradients(network)
        self.proxy_optimizer.apply_gradients(own)
        return self._record(terms)
