"""HDML (METHODS.md section 3): interpolation against numpy, running means, per-group updates,
save/restore, replicas and learning on Omniglot."""

import keras
import numpy as np
import omniglot_training
import pytest
import tensorflow as tf

from pddm_tf import HardnessSchedule, HDMLModel, NPairLoss, SynthesisConfig, hardness_aware_negatives, small_convnet
from pddm_tf.methods import build_model

# -- hardness-aware interpolation --------------------------------------------------------------


def ref_negatives(a, p, n, j_avg, alpha):
    """METHODS.md section 3 in float64, one row at a time."""
    out, lambdas = [], []
    for z, z_p, z_n in zip(a, p, n):
        d_p, d_n = np.linalg.norm(z - z_p), np.linalg.norm(z - z_n)
        lam = (d_p + (d_n - d_p) * np.exp(-alpha / j_avg)) / d_n if d_p < d_n else 1.0
        out.append(z + lam * (z_n - z) if d_p < d_n else z_n)
        lambdas.append(lam)
    return np.array(out), np.array(lambdas)


def _rows(n=12, d=5, seed=0):
    rng = np.random.default_rng(seed)
    a, p, neg = (rng.normal(size=(n, d)) for _ in range(3))
    neg[: n // 3] = a[: n // 3] + 0.1 * (neg[: n // 3] - a[: n // 3])  # negatives closer than the positive
    return a.astype(np.float32), p.astype(np.float32), neg.astype(np.float32)


def test_interpolation_matches_numpy_on_both_branches():
    a, p, n = _rows()
    expected, expected_lambda = ref_negatives(a.astype(np.float64), p, n, j_avg=30.0, alpha=20.0)
    got, lambda0 = hardness_aware_negatives(a, p, n, j_avg=30.0, alpha=20.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lambda0.numpy(), expected_lambda, rtol=1e-5)
    unchanged = expected_lambda == 1.0
    assert 0 < unchanged.sum() < len(a)  # both branches are exercised
    np.testing.assert_array_equal(got.numpy()[unchanged], n[unchanged])


def test_interpolation_limits():
    a, p, n = _rows()
    d_pos, d_neg = np.linalg.norm(a - p, axis=1), np.linalg.norm(a - n, axis=1)
    moved = d_pos < d_neg
    # J_avg -> inf: the original negatives.
    easy, lambda0 = hardness_aware_negatives(a, p, n, j_avg=1e30)
    np.testing.assert_allclose(easy.numpy(), n, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lambda0.numpy(), 1.0, rtol=1e-6)
    # J_avg -> 0: on the segment [z, z-], at distance d+ from the anchor.
    hard, lambda0 = hardness_aware_negatives(a, p, n, j_avg=0.0)
    hard = hard.numpy()
    np.testing.assert_allclose(np.linalg.norm(hard - a, axis=1)[moved], d_pos[moved], rtol=1e-5)
    np.testing.assert_allclose(lambda0.numpy()[moved], (d_pos / d_neg)[moved], rtol=1e-5)
    t = lambda0.numpy()[:, None]
    np.testing.assert_allclose(hard, a + t * (n - a), rtol=1e-5, atol=1e-6)  # collinear, t in (0, 1]
    assert np.all((t > 0) & (t <= 1))


def test_interpolation_is_zero_safe():
    z = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    with tf.GradientTape() as tape:
        tape.watch(z)
        # Row 0: negative equal to the anchor (d- = 0); row 1: positive equal to the anchor (d+ = 0).
        out, lambda0 = hardness_aware_negatives(z, tf.constant([[0.0, 1.0], [0.0, 1.0]]),
                                                tf.constant([[1.0, 0.0], [1.0, 0.0]]), j_avg=0.0)
    np.testing.assert_allclose(lambda0.numpy(), [1.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(out.numpy(), [[1.0, 0.0], [0.0, 1.0]], atol=1e-5)
    assert np.all(np.isfinite(tape.gradient(out, z).numpy()))


# -- model -------------------------------------------------------------------------------------

CLASSES, PER_CLASS, SIZE = 8, 4, 16


def _batches(steps=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((steps, CLASSES * PER_CLASS, SIZE, SIZE, 1)).astype(np.float32)
    templates = rng.random((CLASSES, SIZE, SIZE, 1)).astype(np.float32)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS).astype(np.int32)
    return 0.5 * images + templates[labels][None], np.broadcast_to(labels, (steps, len(labels))).copy()


def _model(base="npair", sgd=None, softmax_scale=1e4, **hardness):
    """A small HDMLModel (generator width 16), built, with `HardnessSchedule(**hardness)`; with `sgd` =
    (metric, generator, classifier) learning rates, three SGDs given to `compile` (one optimiser per
    network, as Keras' GAN guide)."""
    keras.utils.set_random_seed(0)
    model = HDMLModel(small_convnet(SIZE, 1, width=8, depth=2), 8, num_classes=CLASSES, base=base,
                      hardness=HardnessSchedule(**hardness),
                      synthesis=SynthesisConfig(generator_units=16, softmax_scale=softmax_scale))
    model.build((None, SIZE, SIZE, 1))
    if sgd is None:
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    else:
        model.compile(optimizer=keras.optimizers.SGD(sgd[0]), generator_optimizer=keras.optimizers.SGD(sgd[1]),
                      classifier_optimizer=keras.optimizers.SGD(sgd[2]))
        assert [type(o).__name__ for o in (model.generator_optimizer, model.classifier_optimizer)] == ["SGD"] * 2
    return model


@pytest.mark.parametrize("base", ["npair", "triplet", "pddm"])
def test_block_running_means_and_alpha_calibration(base):
    """J_avg is the block mean of the weighted real loss, J_gen_avg that of J_gen (blocks of `window`
    steps, not a sliding window); alpha is calibrated when the first block completes."""
    window, start, beta, steps = 3, 50.0, 200.0, 7
    model = _model(base, window=window, initial_running_mean=start, beta=beta, softmax_scale=1.0)
    images, labels = _batches(steps=steps)
    weighted, gen = [], []
    j_avg, j_gen_avg, alpha = start, start, 0.0
    for step in range(steps):
        logs = model.train_on_batch(images[step], labels[step], return_dict=True)  # one step's values
        np.testing.assert_allclose([logs["j_avg"], logs["j_gen_avg"], logs["alpha"]], [j_avg, j_gen_avg, alpha],
                                   rtol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(logs["easiness"], np.exp(-alpha / j_avg), rtol=1e-5)
        if step < window:  # uncalibrated: easy synthetics, every negative unchanged
            assert logs["lambda0"] == 1.0
        weighted.append(np.exp(-beta / j_gen_avg) * logs["metric_loss_real"])
        gen.append(logs["j_gen"])
        if (step + 1) % window == 0:
            j_avg, j_gen_avg = np.mean(weighted[-window:]), np.mean(gen[-window:])
            alpha = alpha or -np.log(0.5) * j_avg
    assert 0.0 < logs["easiness"] < 1.0 and alpha > 0
    # A sliding window would differ here: the last step is not yet in the means.
    np.testing.assert_allclose(model.j_avg.numpy(), np.mean(weighted[3:6]), rtol=1e-5)
    assert all(np.isfinite(v) for v in logs.values())


# -- every HDML loss against numpy, on a tiny model ----------------------------------------------


def _np_ce(logits, labels):
    logits = logits - logits.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(labels)), labels])


def _np_unit(x):
    return x / np.sqrt(np.maximum((x * x).sum(axis=1, keepdims=True), 1e-12))


def _np_npair(anchors, candidates, reg=0.0):
    """anchors [n, d], candidates [n, n, d] (row i: anchor i's candidates, the positive at j = i), with
    the authors' regulariser reg / 4 (mean ||a||^2 + mean over candidate rows ||c||^2)."""
    logits = np.einsum("id,ijd->ij", anchors, candidates)
    squares = np.mean(np.sum(anchors ** 2, -1)) + np.mean(np.sum(candidates ** 2, -1))
    return _np_ce(logits, np.arange(len(anchors))) + 0.25 * reg * squares


@pytest.mark.parametrize("base, generator_input", [("npair", "single"), ("npair", "anchor_pair"),
                                                   ("triplet", "single")])
def test_every_loss_matches_numpy_on_a_tiny_model(base, generator_input):
    """J_m on real and on synthetic samples, J_recon, J_soft (both terms), J_metric and the
    classifier loss, recomputed in float64 from the model's weights (backbone: Flatten -> Dense)."""
    keras.utils.set_random_seed(3)
    backbone = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
    j_avg, j_gen, alpha, beta, scale, lam = 4.0, 3.0, 2.0, 2.5, 7.0, 0.3
    hardness = HardnessSchedule(alpha=alpha, window=2, beta=beta)
    synthesis = SynthesisConfig(softmax_scale=scale, soft_weight=lam, generator_units=6,
                                generator_input=generator_input)
    model = HDMLModel(backbone, 3, num_classes=4, base=base, hardness=hardness, synthesis=synthesis,
                      triplet_margin=0.4)
    model.build((None, 2, 2, 1))
    model.running_means.assign([j_avg, j_gen])
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 2, 2, 1)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
    terms = {k: float(v) for k, v in model.hdml_terms(tf.constant(images), tf.constant(labels)).items()}

    dense = lambda x, layer: x @ layer.kernel.numpy().astype(np.float64) + layer.bias.numpy()  # noqa: E731
    y = dense(images.reshape(8, 4).astype(np.float64), backbone.layers[-1])
    head = model.head._projections[0]
    # N-pair trains on the unnormalised projection (the authors' code), triplet on unit vectors.
    embed = (lambda x: x) if base == "npair" else _np_unit  # noqa: E731
    z = embed(dense(y, head))
    if base == "npair":
        anchors, positives = np.array([0, 2, 4, 6]), np.array([1, 3, 5, 7])
        rows = np.stack([np.repeat(anchors, 4), np.repeat(positives, 4), np.tile(positives, 4)], axis=1)
    else:
        rows = model._triplets(tf.constant(labels)).rows().numpy()
        assert all(labels[a] == labels[p] != labels[n] for a, p, n in rows)
    hard, _ = ref_negatives(z[rows[:, 0]], z[rows[:, 1]], z[rows[:, 2]], j_avg, alpha)
    if generator_input == "single":
        g_in = np.concatenate([z, hard])
    else:
        g_in = np.concatenate([np.concatenate([z, z], 1), np.concatenate([z[rows[:, 0]], hard], 1)])
    hidden_layer, bn, out_layer = model.generator.layers
    h = np.maximum(dense(g_in, hidden_layer), 0.0)
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + bn.epsilon) * bn.gamma.numpy() + bn.beta.numpy()
    generated = dense(h, out_layer)
    reconstructed, synthetic = generated[:8], generated[8:]
    z_gen = embed(dense(generated, head))
    z_rec, z_syn = z_gen[:8], z_gen[8:]

    def metric(a, p, n):
        if base == "npair":
            return _np_npair(a[::4], n.reshape(4, 4, -1), reg=0.002)
        d_ap, d_an = np.linalg.norm(a - p, axis=1), np.linalg.norm(a - n, axis=1)
        return np.mean(np.maximum(0.4 + d_ap - d_an, 0.0))

    real = metric(z[rows[:, 0]], z[rows[:, 1]], z[rows[:, 2]])
    syn = metric(z_rec[rows[:, 0]], z_rec[rows[:, 1]], z_syn)
    classifier = lambda v: dense(v, model.classifier)  # noqa: E731
    j_recon = (1 - lam) * np.sum((reconstructed - y) ** 2)
    if base == "npair":  # the authors' N-pair J_soft: synthetic negatives + reconstructed anchors
        j_soft = lam * scale * (_np_ce(classifier(synthetic), labels[rows[:, 2]])
                                + _np_ce(classifier(reconstructed[rows[:, 0]]), labels[rows[:, 0]]))
    else:  # the authors' triplet J_soft: one mean over reconstructed anchors, positives and synthetics
        logits = classifier(np.concatenate([reconstructed[rows[:, 0]], reconstructed[rows[:, 1]], synthetic]))
        j_soft = lam * scale * _np_ce(logits, np.concatenate([labels[rows[:, 0]], labels[rows[:, 1]],
                                                              labels[rows[:, 2]]]))
    weight = np.exp(-beta / j_gen)
    expected = {"metric_loss_real": real, "metric_loss_synthetic": syn, "j_recon": j_recon, "j_soft": j_soft,
                "j_gen": j_recon + j_soft, "loss": weight * real + (1 - weight) * syn,
                "classifier_loss": _np_ce(classifier(y), labels)}
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name], value, rtol=2e-4, atol=1e-6, err_msg=name)
    assert 0.05 < weight < 0.95 and abs(syn - real) > 1e-3  # both parts of J_metric matter
    # synthetic=False (HDML's "without" twin): the same rows and weights, J_metric = J_m(real) alone.
    twin = HDMLModel(keras.models.clone_model(backbone), 3, num_classes=4, base=base, hardness=hardness,
                     synthesis=synthesis, triplet_margin=0.4, synthetic=False)
    twin.build((None, 2, 2, 1))
    twin.set_weights(model.get_weights())
    twin_terms = twin.hdml_terms(tf.constant(images), tf.constant(labels))
    np.testing.assert_allclose(float(twin_terms["loss"]), real, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(float(twin_terms["metric_loss_synthetic"]), syn, rtol=2e-4, atol=1e-6)
    # A given alpha (here 2, the original's is 90) is never recalibrated when a block completes.
    for _ in range(model.hardness.window):
        model._update_running_means(tf.constant(1.5), tf.constant(2.5))
    np.testing.assert_allclose([model.alpha_in_use.numpy(), *model.running_means.numpy()], [alpha, 1.5, 2.5])


def test_npair_real_loss_equals_npair_loss():
    model = _model()
    images, labels = _batches(steps=1)
    logs = model.test_on_batch(images[0], labels[0], return_dict=True)
    # The authors' N-pair: the unnormalised projection, TF's npairs_loss regulariser at 0.002.
    unnormalised = model.head.project(model.backbone(images[0], training=False))
    expected = NPairLoss(l2_reg=0.002)(labels[0], unnormalised)
    np.testing.assert_allclose(logs["loss"], expected.numpy(), rtol=1e-5)


@pytest.mark.parametrize("base", ["npair", "pddm"])
def test_each_group_moves_by_its_own_loss_only(base):
    """One SGD step: every group moves by exactly -lr * grad of its own loss, though the other
    losses have non-zero gradients w.r.t. it (so leakage would show)."""
    rates = {"metric": 0.05, "generator": 0.01, "classifier": 0.1}
    model = _model(base, sgd=tuple(rates.values()), softmax_scale=1.0, beta=1.0,
                   initial_running_mean=1.0)  # weight 1 - e^-1 on synthetics: the metric loss reaches G
    images, labels = _batches(steps=1)
    groups = model.parameter_groups()
    objective = {"metric": "loss", "generator": "j_gen", "classifier": "classifier_loss"}
    with tf.GradientTape(persistent=True) as tape:
        terms = model.hdml_terms(tf.constant(images[0]), tf.constant(labels[0]), training=True)
    gradients = {(loss, group): tape.gradient(terms[objective[loss]], groups[group])
                 for loss in groups for group in groups}
    before = {group: [v.numpy().copy() for v in variables] for group, variables in groups.items()}
    model.train_on_batch(images[0], labels[0])
    for group, variables in groups.items():
        for v, old, g in zip(variables, before[group], gradients[group, group]):
            # `new - old` carries the float32 rounding of the weights themselves (and oneDNN may order
            # the update's arithmetic differently): allow a few units in the last place of the largest one.
            atol = 1e-6 + 4 * float(np.spacing(np.abs(old).max()))
            np.testing.assert_allclose(v.numpy() - old, -rates[group] * g.numpy(), rtol=1e-3, atol=atol,
                                       err_msg=f"{group}: {v.path}")
    def size(grads):
        return sum(float(tf.reduce_sum(tf.abs(g))) for g in grads if g is not None)
    for loss, group in [("metric", "generator"), ("generator", "metric"), ("generator", "classifier"),
                        ("classifier", "metric")]:
        assert size(gradients[loss, group]) > 1e-3, (loss, group)


def test_zero_learning_rates_freeze_their_groups():
    model = _model(sgd=(0.1, 0.0, 0.0))
    groups = model.parameter_groups()
    before = {group: [v.numpy().copy() for v in variables] for group, variables in groups.items()}
    images, labels = _batches(steps=2)
    model.fit(images.reshape(-1, SIZE, SIZE, 1), labels.reshape(-1), batch_size=CLASSES * PER_CLASS,
              shuffle=False, verbose=0)
    for group, variables in groups.items():
        same = [np.array_equal(v.numpy(), old) for v, old in zip(variables, before[group])]
        assert all(same) if group != "metric" else not any(same), group


def _state(model):
    return {
        "iterations": [int(o.iterations.numpy()) for o in (model.optimizer, model.generator_optimizer,
                                                            model.classifier_optimizer)],
        "windows": [model.running_means.numpy(), model.block_sums.numpy(), model.block_steps.numpy(),
                    model.alpha_in_use.numpy()],
        "slots": [v.numpy() for o in (model.generator_optimizer, model.classifier_optimizer) for v in o.variables],
    }


def _assert_same_state(a, b):
    assert a["iterations"] == b["iterations"]
    for x, y in zip(a["windows"] + a["slots"], b["windows"] + b["slots"]):
        np.testing.assert_allclose(x, y)


@pytest.mark.parametrize("base", ["npair", "pddm"])
def test_save_and_load_keep_running_means_and_optimisers(tmp_path, base):
    model = _model(base, window=4)
    images, labels = _batches(steps=3)
    for step in range(3):
        model.train_on_batch(images[step], labels[step])
    state = _state(model)
    # Three steps of a block of four: means still initial, sums and the step count in the block's state.
    assert state["iterations"] == [3, 3, 3] and state["windows"][2] == 3 and state["windows"][1][0] > 0
    path = str(tmp_path / "hdml.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, HDMLModel) and loaded.base == base and loaded.num_classes == CLASSES
    _assert_same_state(_state(loaded), state)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):  # includes generator, classifier (and PDDM)
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_allclose(loaded.predict(images[0], verbose=0), model.predict(images[0], verbose=0), atol=1e-6)
    # Training resumes from the restored state.
    loaded.train_on_batch(images[0], labels[0])
    assert _state(loaded)["iterations"] == [4, 4, 4]


@pytest.mark.parametrize("form", ["tf.train.Checkpoint", "save_weights (BackupAndRestore)"])
def test_checkpoint_restores_running_means_and_optimisers(tmp_path, form):
    model = _model(window=4)
    images, labels = _batches(steps=2)
    for step in range(2):
        model.train_on_batch(images[step], labels[step])
    fresh = _model(window=4)
    fresh.train_on_batch(images[0], labels[0])  # different state, optimisers built
    if form == "tf.train.Checkpoint":
        path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
        tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
    else:
        model.save_weights(str(tmp_path / "backup.weights.h5"))
        fresh.load_weights(str(tmp_path / "backup.weights.h5"))
    _assert_same_state(_state(fresh), _state(model))


def test_methods_registry_builds_hdml():
    model = build_model("hdml_pddm", small_convnet(SIZE, 1, width=8, depth=2), 8, num_classes=CLASSES, alpha=0.3)
    assert isinstance(model, HDMLModel) and model.base == "pddm" and model.hardness.alpha is None  # calibrated
    assert model.pddm_loss.alpha == 0.3
    with pytest.raises(ValueError, match="needs the number of training classes"):
        build_model("hdml_npair", small_convnet(SIZE, 1, width=8, depth=2), 8)
    with pytest.raises(ValueError, match="base"):
        HDMLModel(small_convnet(SIZE, 1, width=8, depth=2), 8, num_classes=CLASSES, base="lifted")


def _fit(strategy, images, labels, base):
    with strategy.scope():
        model = _model(base, sgd=(0.05, 0.01, 0.1), softmax_scale=1.0, initial_running_mean=5.0, window=2)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return model, history.history


@pytest.mark.parametrize("base", ["npair", "triplet"])
def test_mirrored_two_replicas_equal_one_device(base, two_replicas):
    images, labels = _batches(steps=2)
    single, single_logs = _fit(tf.distribute.get_strategy(), images, labels, base)
    mirrored, mirrored_logs = _fit(two_replicas, images, labels, base)
    assert all(np.isfinite(v[0]) for v in mirrored_logs.values())
    for name in single_logs:
        np.testing.assert_allclose(mirrored_logs[name], single_logs[name], rtol=1e-4, err_msg=name)
    for a, b in zip(single.weights, mirrored.weights):
        # atol 1e-4: after two SGD steps (lr up to 0.1) the summation order of the replicas' gradients
        # moves single elements by a few 1e-5 (seen: the triplet generator's J_soft, one mean over 3t rows).
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4, err_msg=a.path)
    assert [int(o.iterations.numpy()) for o in (mirrored.optimizer, mirrored.generator_optimizer)] == [2, 2]
    untrained = _model(base)  # the comparison above must be between moved weights
    for group in ("metric", "generator", "classifier"):
        moved = [not np.allclose(a.numpy(), b.numpy()) for a, b in
                 zip(mirrored.parameter_groups()[group], untrained.parameter_groups()[group])]
        assert any(moved), group


# -- learning on real data ---------------------------------------------------------------------

STEPS = 150
# Measured with seed 0 (150 steps, the defaults: single-embedding generator input, calibrated alpha):
# J_gen last/first-20 mean (3778 + 35025) / (5031 + 51392) = 0.69 (J_soft, which includes the
# reconstructed anchors' cross-entropy, dominates it); synthetic accuracy 0.103 over the last 20 steps
# (chance 1/121 = 0.008); held-out Recall@1 0.217 -> 0.361.
GEN_FACTOR, SYNTHETIC_ACCURACY_MIN, RECALL_GAIN = 0.85, 0.04, 0.08


@pytest.mark.slow
def test_hdml_npair_learns_on_omniglot():
    keras.utils.set_random_seed(0)
    num_classes = omniglot_training.split().train.num_classes
    model = HDMLModel(small_convnet(omniglot_training.SIZE, 1), 64, num_classes=num_classes, base="npair")
    # One epoch per step, so the History holds one entry per step.
    before, after, history = omniglot_training.train_and_measure(model, STEPS, steps_per_epoch=1)
    assert not any(np.isnan(v).any() for v in history.values())
    j_gen = np.array(history["j_gen"])
    assert j_gen[-20:].mean() < GEN_FACTOR * j_gen[:20].mean()
    chance = 1.0 / num_classes
    assert np.mean(history["synthetic_accuracy"][-20:]) > SYNTHETIC_ACCURACY_MIN > 4 * chance
    assert after > before + RECALL_GAIN, (before, after)


def test_unbuilt_model_says_to_build_it():
    model = HDMLModel(small_convnet(SIZE, 1, width=8, depth=2), 8, num_classes=CLASSES,
                      synthesis=SynthesisConfig(generator_units=16))
    model.compile(optimizer="adam")
    images = np.zeros((4, SIZE, SIZE, 1), np.float32)
    with pytest.raises(ValueError, match=r"build the HDMLModel before fit"):
        model.fit(images, np.array([0, 0, 1, 1], np.int32), epochs=1, verbose=0)
