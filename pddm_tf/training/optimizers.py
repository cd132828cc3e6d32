"""The optimiser `pddm-tf train` and the benchmarks use: Adam with weight decay in one of two modes,
an optional warm-up and cosine learning-rate decay.

Weight decay modes (`WEIGHT_DECAY_MODES`; METHODS.md sections 2 and 7):

* "decoupled": AdamW (Loshchilov & Hutter, 2019). Each step multiplies every trainable weight by
  (1 - lr_t * weight_decay) apart from the Adam update: Keras scales the coefficient by the learning
  rate, so at lr 2e-3 a coefficient of 1e-4 shrinks a weight by (1 - 2e-7) per step, a factor 0.9998
  over 1,000 steps, i.e. nothing.
* "l2": the coupled L2 term of the papers and the authors' code (Caffe's weight_decay, HDML's TF1
  loss term, PyTorch's Adam(weight_decay=...)): weight_decay * w is added to the gradient of every
  kernel (variables named "...kernel": dense, convolution and PDDM matrices; not biases, not
  batch-norm scales and offsets, not scalars such as the PDDM prior's weight), as the gradient of
  weight_decay * sum w^2 / 2, before Adam's moment estimates. Under Adam the term is normalised
  with the gradient, so it does not shrink a weight by a fixed factor as decoupled decay does.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

SCHEDULES = ("constant", "cosine")
WEIGHT_DECAY_MODES = ("decoupled", "l2")


def decays_under_l2(variable: Any) -> bool:
    """Whether the coupled L2 term applies to `variable`: kernels only (the name ends in "kernel")."""
    # The TF backend hands update_step the underlying tf.Variable, named e.g. "dense/kernel:0".
    return str(variable.name).split("/")[-1].split(":")[0].endswith("kernel")


class _CoupledL2:
    """Adds l2 * w to each kernel's gradient before the base optimiser's update (see the module): the
    part of `AdamL2` and `SGDL2` that does not depend on their Keras base, which follows it in the MRO."""

    def __init__(self, learning_rate: Any, l2: float = 0.0, **kwargs: Any) -> None:
        if not l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        super().__init__(learning_rate=learning_rate, **kwargs)  # type: ignore[call-arg]
        self.l2 = float(l2)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self.l2 > 0 and decays_under_l2(variable):
            if isinstance(gradient, tf.IndexedSlices):
                gradient = tf.convert_to_tensor(gradient)
            gradient = gradient + tf.cast(self.l2, gradient.dtype) * tf.cast(variable, gradient.dtype)
        super().update_step(gradient, variable, learning_rate)  # type: ignore[misc]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "l2": self.l2}  # type: ignore[misc]


@keras.saving.register_keras_serializable(package="pddm_tf")
class AdamL2(_CoupledL2, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with the coupled L2 term `l2` on kernels (PyTorch's Adam(weight_decay=l2))."""

    def __init__(self, learning_rate: Any = 1e-3, l2: float = 0.0, **kwargs: Any) -> None:
        super().__init__(learning_rate=learning_rate, l2=l2, **kwargs)


@keras.saving.register_keras_serializable(package="pddm_tf")
class SGDL2(_CoupledL2, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with the coupled L2 term `l2` on kernels (Caffe's weight_decay)."""

    def __init__(self, learning_rate: Any = 1e-2, l2: float = 0.0, **kwargs: Any) -> None:
        super().__init__(learning_rate=learning_rate, l2=l2, **kwargs)


@keras.saving.register_keras_serializable(package="pddm_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """lr(t) = peak * t / warmup for t < warmup, then
    final + (peak - final) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2 until `total`,
    and `final` after it (final = peak * final_fraction)."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.0) -> None:
        if total_steps < 1 or not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got "
                             f"{total_steps} and {warmup_steps}")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_fraction = float(final_fraction)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        progress = keras.ops.clip((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
        final = self.peak * self.final_fraction
        cosine = final + (self.peak - final) * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "final_fraction": self.final_fraction}


def make_optimizer(learning_rate: float, weight_decay: float = 0.0, schedule: str = "constant",
                   total_steps: int | None = None, warmup_steps: int = 0,
                   ema_momentum: float = 0.0, weight_decay_mode: str = "decoupled") -> keras.optimizers.Optimizer:
    """Adam (weight_decay = 0), AdamW (decoupled decay) or `AdamL2` (coupled L2 on kernels) at `learning_rate`.

    Args:
      learning_rate: the (peak) learning rate, > 0.
      weight_decay: the coefficient, >= 0: decoupled decay per unit learning rate, or the L2 term's
        lambda (the gradient of lambda * sum w^2 / 2), as `weight_decay_mode` says.
      weight_decay_mode: "decoupled" (AdamW, every trainable weight) or "l2" (the papers' coupled
        term, kernels only); see the module docstring.
      schedule: "constant", or "cosine": `WarmupCosine` over `total_steps` with `warmup_steps`.
      total_steps: the number of training steps (needed by "cosine").
      warmup_steps: linear warm-up steps (either schedule; constant after the warm-up).
      ema_momentum: 0 (default) = off; otherwise in (0, 1): the optimiser keeps an exponential moving
        average of the trainable weights, ema <- m * ema + (1 - m) * w after each step (Keras'
        `use_ema`), and `fit` ends by writing the average into the weights (BatchNorm statistics are
        already moving averages and are left as they are).
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if schedule == "cosine":
        if total_steps is None:
            raise ValueError("the cosine schedule needs total_steps")
        rate = WarmupCosine(learning_rate, total_steps, warmup_steps)
    elif warmup_steps > 0:
        # Constant after a linear warm-up: a cosine whose decay never starts.
        rate = WarmupCosine(learning_rate, warmup_steps + 1, warmup_steps, final_fraction=1.0)
    if not 0.0 <= ema_momentum < 1.0:
        raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
    ema = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum > 0 else {}
    if weight_decay > 0 and weight_decay_mode == "l2":
        return AdamL2(rate, l2=weight_decay, **ema)
    if weight_decay > 0:
        return keras.optimizers.AdamW(rate, weight_decay=weight_decay, **ema)
    return keras.optimizers.Adam(rate, **ema)
