"""Generalised-mean (GeM) global pooling of a backbone's feature map."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="pddm_tf")
class GeMPooling(keras.layers.Layer):
    """Generalised-mean (GeM) global pooling with a learnable exponent p.

    For each sample and channel: y = (mean_{h,w} max(x, eps)^p)^(1/p); [n, h, w, c] -> [n, c]
    (channels_last; [n, c, h, w] -> [n, c] for channels_first). p = 1 is average pooling and
    p -> inf approaches max pooling. Features are clamped at eps first because x^p needs x > 0
    (GeM assumes non-negative, e.g. post-ReLU, features; negative values are treated as eps).

    p is one scalar weight shared by all channels. It is not constrained: keep it positive.

    Args:
      p: initial exponent (> 0), 3 by default as in Radenovic et al.
      eps: clamp floor (> 0).
      learn_p: whether p is trainable.
      data_format: "channels_last" or "channels_first"; default: Keras' image_data_format.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True, data_format: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if p <= 0 or eps <= 0:
            raise ValueError(f"GeMPooling needs p > 0 and eps > 0, got p={p}, eps={eps}")
        self.initial_p = float(p)
        self.eps = float(eps)
        self.learn_p = bool(learn_p)
        self.data_format = data_format or keras.backend.image_data_format()
        if self.data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"unknown data_format {self.data_format!r}")

    def build(self, input_shape: Any) -> None:
        if len(input_shape) != 4:
            raise ValueError(f"GeMPooling expects 4-D feature maps, got shape {input_shape}")
        self.p = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.initial_p),
                                 trainable=self.learn_p)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        axes = [1, 2] if self.data_format == "channels_last" else [2, 3]
        x = tf.maximum(inputs, tf.cast(self.eps, inputs.dtype))
        p = tf.cast(self.p, x.dtype)
        # Computed as m * mean((x/m)^p)^(1/p) with m the per-channel maximum: the terms stay in
        # (0, 1], so a large p can neither overflow x^p nor underflow the whole mean to 0. The value
        # is the same for every m > 0, hence holding m constant (stop_gradient) gives exact gradients.
        m = tf.stop_gradient(tf.reduce_max(x, axis=axes, keepdims=True))
        mean = tf.reduce_mean(tf.pow(x / m, p), axis=axes)
        return tf.squeeze(m, axis=axes) * tf.pow(mean, 1.0 / p)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        channels = input_shape[-1] if self.data_format == "channels_last" else input_shape[1]
        return (input_shape[0], channels)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(p=self.initial_p, eps=self.eps, learn_p=self.learn_p, data_format=self.data_format)
        return config
