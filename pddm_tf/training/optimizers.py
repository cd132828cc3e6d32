"""The optimiser `pddm-tf train` and the benchmarks use: Adam or AdamW, with an optional warm-up and
cosine learning-rate decay.

Weight decay is decoupled (AdamW, Loshchilov & Hutter 2019): each step multiplies the weights by
(1 - lr_t * weight_decay) apart from the Adam update, so the decay follows the schedule and is not
rescaled by Adam's second-moment estimates as an L2 term in the loss would be. The papers regularise
all weights (METHODS.md section 7); with Adam an L2 term and decoupled decay are different
regularisers, and decoupled decay is the one that behaves as weight decay does under SGD.
"""

from __future__ import annotations

import math

import keras

SCHEDULES = ("constant", "cosine")


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
                   ema_momentum: float = 0.0) -> keras.optimizers.Optimizer:
    """Adam (weight_decay = 0) or AdamW (decoupled weight decay) at `learning_rate`.

    Args:
      learning_rate: the (peak) learning rate, > 0.
      weight_decay: decoupled weight decay per unit learning rate, >= 0.
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
    if weight_decay > 0:
        return keras.optimizers.AdamW(rate, weight_decay=weight_decay, **ema)
    return keras.optimizers.Adam(rate, **ema)
