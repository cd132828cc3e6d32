"""Backbones: Keras models from images [n, s, s, c] to pooled features [n, k].

`backbone(name, image_size, ...)` builds any backbone of the `BACKBONES` registry: the small
convolutional net that suits the embedded Omniglot data (`small_convnet`) and ImageNet networks of
`keras.applications` (ResNet, InceptionV3, EfficientNetV2, ConvNeXt, MobileNetV3). Every backbone
takes pixels in [0, 1], as the library's pipelines and the serving export produce them; each
network's own input convention is built into the model (`BackbonePreprocessing`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf

from pddm_tf.layers import GeMPooling


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


# -- preprocessing -------------------------------------------------------------------------------

#: ImageNet channel means on the 0-255 scale, in BGR order (the "caffe" convention of ResNet).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: ImageNet channel mean and standard deviation on the 0-1 scale, in RGB order ("torch" convention).
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "raw")


@keras.saving.register_keras_serializable(package="pddm_tf")
class BackbonePreprocessing(keras.layers.Layer):
    """Maps pixels x in [0, 1], [n, h, w, c] with c in {1, 3} (RGB), to a network's input [n, h, w, 3].

    A single channel is first repeated into three (grey as R = G = B). Then, by `mode`, the result
    equals `keras.applications.imagenet_utils.preprocess_input(255 x, mode=...)`:
      * "caffe": 255 x with channels reversed to BGR, minus the ImageNet BGR means (ResNet).
      * "tf": 2 x - 1, i.e. [-1, 1] (InceptionV3).
      * "torch": (x - ImageNet mean) / ImageNet std, per RGB channel.
      * "raw": 255 x, for networks that rescale 0-255 pixels themselves (EfficientNetV2, ConvNeXt,
        MobileNetV3 built with include_preprocessing=True).
    """

    def __init__(self, mode: str = "raw", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {PREPROCESSING_MODES}")
        self.mode = mode

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = inputs
        if x.shape[-1] == 1:
            x = tf.tile(x, [1, 1, 1, 3])
        elif x.shape[-1] != 3:
            raise ValueError(f"BackbonePreprocessing expects 1 or 3 channels, got {x.shape[-1]}")
        if self.mode == "caffe":
            return 255.0 * x[..., ::-1] - tf.constant(_CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "tf":
            return 2.0 * x - 1.0
        if self.mode == "torch":
            return (x - tf.constant(_TORCH_MEAN, dtype=x.dtype)) / tf.constant(_TORCH_STD, dtype=x.dtype)
        return 255.0 * x

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(mode=self.mode)
        return config


# -- frozen batch normalisation ------------------------------------------------------------------

def _all_layers(model: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Every layer inside `model`, recursing into nested models (each shared layer once)."""
    seen: set[int] = set()
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(getattr(layer, "layers", []))


def _freeze_batchnorm(model: keras.layers.Layer) -> int:
    """Sets trainable=False on every BatchNormalization layer of `model`; returns how many.

    In Keras 3 such a layer always normalises with its moving statistics, even when called with
    training=True, and never updates them; its gamma and beta are no longer trained either.
    """
    count = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            count += 1
    return count


@keras.saving.register_keras_serializable(package="pddm_tf")
class Backbone(keras.Model):
    """A functional model images [n, s, s, c] in [0, 1] -> features [n, k], as `backbone` builds it.

    It is a plain functional model with one addition: with `freeze_batchnorm=True`, its
    BatchNormalization layers stay frozen (inference mode, moving statistics kept, gamma and beta not
    trained) whatever happens to `trainable` later. Keras propagates `model.trainable = True` to
    every sub-layer, which would otherwise silently unfreeze them after the usual "freeze the
    backbone, train the head, unfreeze" warm-up. The flag is part of the config, so it survives
    `model.save` / `keras.models.load_model`.
    """

    def __init__(self, *args: Any, freeze_batchnorm: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.freeze_batchnorm = bool(freeze_batchnorm)
        if self.freeze_batchnorm:
            _freeze_batchnorm(self)

    @property
    def trainable(self) -> bool:
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        keras.layers.Layer.trainable.fset(self, value)
        if getattr(self, "freeze_batchnorm", False):
            _freeze_batchnorm(self)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(freeze_batchnorm=self.freeze_batchnorm)
        return config


# -- registry ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How `backbone` builds one named network.

    Attributes:
      builder: the constructor (a `keras.applications` function, or `small_convnet`).
      preprocessing: `BackbonePreprocessing` mode turning [0, 1] pixels into the network's input;
        None for `small_convnet`, which takes [0, 1] pixels of any channel count as they are.
      min_size: smallest image side the network accepts.
      self_rescaling: the builder takes `include_preprocessing=True` and then rescales 0-255 pixels
        itself.
      pool_then_norm: the network ends with a LayerNormalization meant to follow global pooling
        (ConvNeXt's head norm), which `backbone` applies after its own pooling.
    """

    builder: Callable[..., keras.Model]
    preprocessing: str | None
    min_size: int
    self_rescaling: bool = False
    pool_then_norm: bool = False


def _application(builder: Callable[..., keras.Model], preprocessing: str, min_size: int = 32,
                 **flags: bool) -> BackboneSpec:
    return BackboneSpec(builder, preprocessing, min_size, **flags)


_apps = keras.applications
#: Known backbones by canonical name (`backbone` looks names up case-insensitively).
BACKBONES: dict[str, BackboneSpec] = {
    "small_convnet": BackboneSpec(small_convnet, None, 2),
    # Caffe-converted ResNets: BGR, ImageNet mean subtracted, 0-255.
    "ResNet50": _application(_apps.ResNet50, "caffe"),
    "ResNet101": _application(_apps.ResNet101, "caffe"),
    "ResNet152": _application(_apps.ResNet152, "caffe"),
    # The GoogLeNet family's stand-in (PDDM/HDML use GoogLeNet): [-1, 1] inputs, at least 75 px.
    "InceptionV3": _application(_apps.InceptionV3, "tf", min_size=75),
    **{f"EfficientNetV2{v}": _application(getattr(_apps, f"EfficientNetV2{v}"), "raw", self_rescaling=True)
       for v in ("B0", "B1", "B2", "B3", "S", "M", "L")},
    **{f"ConvNeXt{v}": _application(getattr(_apps, f"ConvNeXt{v}"), "raw", self_rescaling=True,
                                    pool_then_norm=True)
       for v in ("Tiny", "Small", "Base", "Large", "XLarge")},
    **{f"MobileNetV3{v}": _application(getattr(_apps, f"MobileNetV3{v}"), "raw", self_rescaling=True)
       for v in ("Small", "Large")},
}
del _apps

POOLINGS = ("avg", "max", "gem")


def _lookup(name: str) -> tuple[str, BackboneSpec]:
    """(canonical name, spec) of a backbone name, matched case-insensitively."""
    by_lower = {key.lower(): key for key in BACKBONES}
    key = by_lower.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")
    return key, BACKBONES[key]


def _pooling_layer(pooling: str) -> keras.layers.Layer:
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")
    return GeMPooling(name="gem_pool")


def backbone(name: str, image_size: int, channels: int = 3, weights: str | None = None, pooling: str = "avg",
             freeze_batchnorm: bool = False, model_name: str | None = None, **kwargs: Any) -> Backbone:
    """A named backbone: images [n, image_size, image_size, channels], pixels in [0, 1] -> features [n, k].

    For `keras.applications` networks, the model is
      BackbonePreprocessing -> network without its classifier -> global pooling [-> ConvNeXt's norm],
    so the network sees exactly what its own `keras.applications.<family>.preprocess_input` would
    make of 255 x (see `BackbonePreprocessing`): ResNet caffe-style BGR minus the ImageNet means;
    InceptionV3 [-1, 1]; EfficientNetV2, ConvNeXt and MobileNetV3 0-255, which they rescale
    themselves (built with include_preprocessing=True). Grey images (channels=1) are repeated into
    three identical channels, so ImageNet weights apply to them too. k is the network's last
    feature width, e.g. 2048 for ResNet50 and InceptionV3, 1280 for EfficientNetV2B0, 768 for
    ConvNeXtTiny, 576 for MobileNetV3Small.

    "small_convnet" (the default for the embedded Omniglot data) takes the pixels unchanged and any
    channel count; `width` and `depth` pass through as keyword arguments; k = width.

    Args:
      name: a key of `BACKBONES`, any letter case.
      image_size: side s of the square input images; at least the network's minimum (e.g. 75 for
        InceptionV3, 32 for the other ImageNet networks, 2**depth for small_convnet).
      channels: 1 (grey) or 3 (RGB) for the ImageNet networks.
      weights: None (random initialisation), "imagenet" (downloaded by Keras on first use) or the
        path of a Keras weights file for the network without its classifier. small_convnet has none.
      pooling: "avg", "max" or "gem" (`GeMPooling`, learnable p initialised at 3). GeM clamps
        features at a small eps, which suits ReLU-type outputs (ResNet, InceptionV3, small_convnet);
        the last features of EfficientNetV2 (swish) and MobileNetV3 (hard-swish) dip slightly below
        zero, and ConvNeXt's are signed (no activation after its last block): their negative part
        counts as eps.
      freeze_batchnorm: keep every BatchNormalization layer in inference mode with its moving
        statistics (as the PDDM/HDML papers fine-tune); this also freezes their gamma and beta. See
        `Backbone`: the setting survives `trainable` changes and save/load. ConvNeXt has no
        BatchNormalization (it uses LayerNormalization), so the flag changes nothing there.
      model_name: the returned model's name (default "<name>_<pooling>", lower case).
      **kwargs: passed to the network's constructor, e.g. alpha or minimalistic for MobileNetV3.

    Raises:
      ValueError: unknown name or pooling, unsupported channels or weights, image_size too small.
    """
    key, spec = _lookup(name)
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if image_size < spec.min_size:
        raise ValueError(f"{key} needs image_size >= {spec.min_size}, got {image_size}")
    model_name = model_name or f"{key.lower()}_{pooling}"

    if spec.preprocessing is None:  # small_convnet: its own graph, up to its global pooling
        if weights is not None:
            raise ValueError(f"{key} has no pretrained weights; use weights=None")
        net = spec.builder(image_size, channels, **kwargs)
        features = net.get_layer("pool").input
        return Backbone(net.input, _pooling_layer(pooling)(features), name=model_name,
                        freeze_batchnorm=freeze_batchnorm)

    if channels not in (1, 3):
        raise ValueError(f"{key} takes 1 (grey) or 3 (RGB) channels, got {channels}")
    if spec.self_rescaling:
        kwargs["include_preprocessing"] = True
    net = spec.builder(include_top=False, weights=weights, input_shape=(image_size, image_size, 3), pooling=None,
                       **kwargs)
    head_norm = None
    if spec.pool_then_norm:
        # keras.applications' ConvNeXt without its top applies its final LayerNormalization to the
        # feature map when pooling=None; the network was trained with it after global pooling.
        head_norm = net.layers[-1]
        if not isinstance(head_norm, keras.layers.LayerNormalization):
            raise RuntimeError(f"{key}: expected a final LayerNormalization, found {type(head_norm).__name__}")
        net = keras.Model(net.input, head_norm.input, name=net.name)

    images = keras.Input((image_size, image_size, channels), name="images")
    x = BackbonePreprocessing(spec.preprocessing, name="preprocessing")(images)
    x = _pooling_layer(pooling)(net(x))
    if head_norm is not None:
        x = head_norm(x)
    return Backbone(images, x, name=model_name, freeze_batchnorm=freeze_batchnorm)
