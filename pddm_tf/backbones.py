"""Backbones: Keras models from images [n, s, s, c] to pooled features [n, k]."""

from __future__ import annotations

import keras


def small_convnet(image_size: int = 32, channels: int = 1, width: int = 64, depth: int = 4,
                  name: str = "small_convnet") -> keras.Model:
    """The default backbone for the embedded Omniglot data: `depth` blocks of
    Conv3x3(width) -> BatchNorm -> ReLU -> MaxPool2, then global average pooling.

    This is the classic 4-block few-shot Omniglot encoder. BatchNormalization is synchronised
    across replicas so that a model trained under `MirroredStrategy` sees the same batch statistics
    as on one device with the same global batch (the plain layer would normalise each replica's
    shard on its own).

    Returns a functional model [n, image_size, image_size, channels] -> [n, width].
    """
    if image_size < 2 ** depth:
        raise ValueError(f"image_size={image_size} is too small for {depth} pooling blocks "
                         f"(needs at least {2 ** depth})")
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = inputs
    for block in range(depth):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        x = keras.layers.BatchNormalization(synchronized=True, name=f"bn{block}")(x)
        x = keras.layers.ReLU(name=f"relu{block}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name=name)
