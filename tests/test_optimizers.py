"""The training optimiser: Adam / AdamW and the warm-up + cosine schedule."""

import math

import keras
import numpy as np
import pytest

from pddm_tf.training.optimizers import WarmupCosine, make_optimizer


def test_warmup_cosine_follows_its_formula():
    schedule = WarmupCosine(peak=0.1, total_steps=100, warmup_steps=10, final_fraction=0.05)
    for step in (0, 5, 9, 10, 40, 99, 100, 250):
        if step < 10:
            expected = 0.1 * (step + 1) / 10
        else:
            progress = min((step - 10) / 90, 1.0)
            expected = 0.005 + (0.1 - 0.005) * 0.5 * (1 + math.cos(math.pi * progress))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step
    restored = WarmupCosine.from_config(schedule.get_config())
    assert float(restored(37)) == pytest.approx(float(schedule(37)))


def test_adamw_decays_weights_apart_from_the_gradient_step():
    """With a zero gradient Adam does not move; AdamW multiplies the weights by (1 - lr * wd)."""
    for weight_decay, factor in ((0.0, 1.0), (0.5, 1 - 0.1 * 0.5)):
        optimizer = make_optimizer(0.1, weight_decay=weight_decay)
        variable = keras.Variable(np.array([2.0, -4.0], np.float32))
        optimizer.apply_gradients([(np.zeros(2, np.float32), variable)])
        np.testing.assert_allclose(variable.numpy(), np.array([2.0, -4.0]) * factor, rtol=1e-6)


def test_constant_schedule_with_warmup_and_errors():
    optimizer = make_optimizer(0.2, warmup_steps=4)
    assert [float(optimizer._learning_rate(s)) for s in (0, 3, 4, 1000)] == \
        pytest.approx([0.05, 0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="total_steps"):
        make_optimizer(0.1, schedule="cosine")
    with pytest.raises(ValueError, match="learning_rate"):
        make_optimizer(0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        make_optimizer(0.1, weight_decay=-1)


def test_ema_of_the_weights_follows_its_recurrence_and_fit_ends_with_it():
    """ema_momentum m: after each step ema <- m ema + (1 - m) w (numpy recurrence over the weights
    plain SGD-like Adam steps produce), and `fit` leaves the average in the model's weights."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=make_optimizer(0.05, ema_momentum=0.8), loss="mse")
    weights = [model.layers[0].kernel.numpy().copy()]

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            weights.append(model.layers[0].kernel.numpy().copy())

    steps = 6
    model.fit(x, y, batch_size=32, epochs=steps, callbacks=[Record()], verbose=0)
    # Keras seeds the average with the first step's weights, then applies the recurrence.
    ema = weights[1]
    for w in weights[2:steps + 1]:
        ema = 0.8 * ema + 0.2 * w
    assert not np.allclose(weights[steps], ema, atol=1e-3)  # the average differs from the last weights ...
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), ema, rtol=1e-5, atol=1e-6)  # ... and fit ends with it
    with pytest.raises(ValueError, match="ema_momentum"):
        make_optimizer(0.1, ema_momentum=1.0)
