"""PDDMModel: gradient flow, distributed equivalence, serialization, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import PDDM, DoubleHeaderHingeLoss, PDDMModel, QuadrupletMiner, small_convnet


def _batches(steps=3, classes=8, per_class=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((steps, classes * per_class, size, size, 1)).astype(np.float32)
    # Give each class a shared template so the task is learnable and mining is non-trivial.
    templates = rng.random((classes, size, size, 1)).astype(np.float32)
    labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
    images = 0.5 * images + templates[labels][None]
    return images, np.broadcast_to(labels, (steps, len(labels))).copy()


def _model(mining="per_pair", mining_score="pddm"):
    keras.utils.set_random_seed(0)
    model = PDDMModel(small_convnet(16, 1, width=8, depth=2), embedding_dim=8,
                      pddm=PDDM(units=8, combined_units=8),
                      loss=DoubleHeaderHingeLoss(alpha=1.0, beta=1.0, miner=QuadrupletMiner(mining)),
                      mining_score=mining_score)
    model.build((None, 16, 16, 1))
    return model


@pytest.mark.parametrize("mining_score", ["pddm", "euclidean"])
def test_one_step_updates_backbone_head_and_pddm(mining_score):
    model = _model(mining_score=mining_score)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    groups = {"backbone": model.backbone, "head": model.head, "pddm": model.pddm}
    before = {name: [v.numpy().copy() for v in part.trainable_variables] for name, part in groups.items()}
    images, labels = _batches(steps=1)
    logs = model.train_on_batch(images[0], labels[0], return_dict=True)
    for name, part in groups.items():
        moved = [not np.allclose(v.numpy(), b) for v, b in zip(part.trainable_variables, before[name])]
        # Every kernel of every group receives gradient (biases behind an inactive ReLU may not).
        kernels = [m for v, m in zip(part.trainable_variables, moved) if "kernel" in v.path]
        assert kernels and all(kernels), name
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["valid_fraction"] == 1.0


def test_logged_loss_equals_standalone_loss_on_same_batch():
    model = _model()
    model.compile(optimizer="sgd")
    images, labels = _batches(steps=1)
    logs = model.test_on_batch(images[0], labels[0], return_dict=True)
    f = model.predict(images[0], verbose=0)
    expected = model.hinge_loss.terms(labels[0], f, model.pddm(f))
    np.testing.assert_allclose(logs["loss"], expected.total.numpy(), rtol=1e-5)
    np.testing.assert_allclose(logs["metric_loss"], expected.metric.numpy(), rtol=1e-5)


def _train(strategy, images, labels):
    with strategy.scope():
        model = _model()
        model.compile(optimizer=keras.optimizers.SGD(0.05))
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return model, history.history["loss"][0]


def test_mirrored_two_replicas_equal_one_device(two_replicas):
    images, labels = _batches(steps=3)
    single, single_loss = _train(tf.distribute.get_strategy(), images, labels)
    mirrored, mirrored_loss = _train(two_replicas, images, labels)
    # Same global batch, same data order: equal up to float32 reduction-order noise.
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-4)
    for a, b in zip(single.weights, mirrored.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    # The run must have moved the weights, or the comparison above proves nothing.
    assert not np.allclose(single.pddm.c_kernel.numpy(), _model().pddm.c_kernel.numpy())


def test_save_and_load_round_trip(tmp_path):
    model = _model(mining="hardest", mining_score="euclidean")
    images, _ = _batches(steps=1)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, PDDMModel) and loaded.mining_score == "euclidean"
    assert loaded.hinge_loss.mining == "hardest"
    np.testing.assert_allclose(loaded.predict(images[0], verbose=0), model.predict(images[0], verbose=0), atol=1e-6)
    np.testing.assert_allclose(loaded.pddm.s_kernel.numpy(), model.pddm.s_kernel.numpy())


def test_bad_training_input():
    model = _model()
    model.compile(optimizer="sgd")
    images, labels = _batches(steps=1)
    with pytest.raises(ValueError, match="images must have shape"):
        model.train_on_batch(images[0][..., 0], labels[0])
    with pytest.raises(ValueError, match="labels must have shape"):
        model.train_on_batch(images[0], labels[0][:, None])
    with pytest.raises(TypeError, match="integer"):
        model.train_on_batch(images[0], labels[0].astype(np.float32))
    with pytest.raises(ValueError, match="mining_score"):
        PDDMModel(small_convnet(16, 1, width=8, depth=2), mining_score="cosine")


def test_compile_refuses_a_loss_and_keeps_the_optimizer(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match=r"PDDMModel.compile got loss='mse', but the model's loss is given at "
                                         r"construction \(PDDMModel\(\.\.\., loss=\.\.\.\)\)"):
        model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="given at construction"):
        model.compile("sgd", "mse")  # positionally too
    optimizer = keras.optimizers.SGD(0.25)
    model.compile(optimizer=optimizer)
    assert model.optimizer is optimizer
    images, labels = _batches(steps=1)
    model.train_on_batch(images[0], labels[0])
    assert int(model.optimizer.iterations.numpy()) == 1
    # Loading a compiled model re-runs compile (Keras' compile_config), without a loss, and keeps the optimizer.
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, keras.optimizers.SGD)
    np.testing.assert_allclose(float(loaded.optimizer.learning_rate), 0.25)
    np.testing.assert_allclose(loaded.predict(images[0], verbose=0), model.predict(images[0], verbose=0), atol=1e-6)


def test_mined_pairs_are_scored_once_each_with_the_gradient_of_every_pair():
    from pddm_tf.miners import mine_quadruplets
    from pddm_tf.models import pddm_quadruplet_terms

    class CountingPDDM(PDDM):
        def pair_scores(self, f_a, f_b):
            self.pairs_scored = int(f_a.shape[0])
            return super().pair_scores(f_a, f_b)

    rng = np.random.default_rng(3)
    labels = tf.constant(np.repeat(np.arange(6), 4).astype(np.int32))
    unit = rng.normal(size=(24, 5))
    embeddings = tf.Variable((unit / np.linalg.norm(unit, axis=1, keepdims=True)).astype(np.float32))
    pddm, loss = CountingPDDM(units=6, combined_units=6), DoubleHeaderHingeLoss(alpha=2.0, beta=2.0)
    quads = mine_quadruplets(labels, pddm(embeddings), "per_pair")
    mined = {"quadruplets": quads, "score_gap": tf.constant(0.0)}
    with tf.GradientTape() as tape:
        total = pddm_quadruplet_terms(pddm, loss, embeddings, mined)["loss"]
    grads = tape.gradient(total, [embeddings, *pddm.trainable_variables])
    # 36 positive pairs and 72 negative pairs, of which at most one per anchor (24) are distinct.
    q = quads.indices.shape[0]
    distinct_negatives = len({(a, n) for a, _, n, _ in quads.indices.numpy()}
                             | {(a, n) for _, a, _, n in quads.indices.numpy()})
    assert q == 36 and distinct_negatives <= 24
    assert pddm.pairs_scored == q + distinct_negatives

    # Reference: every one of the 3q pairs scored on its own, as the loss is written (METHODS.md section 2).
    i, j, k, l = (quads.indices[:, c] for c in range(4))
    with tf.GradientTape() as tape:
        f = embeddings
        s_ij, s_ik, s_jl = (pddm.pair_scores(tf.gather(f, a), tf.gather(f, b)) for a, b in ((i, j), (i, k), (j, l)))
        d = lambda a, b: tf.reduce_sum(tf.square(tf.gather(f, a) - tf.gather(f, b)), 1)  # noqa: E731
        reference = (tf.reduce_mean(tf.nn.relu(2.0 + s_ik - s_ij) + tf.nn.relu(2.0 + s_jl - s_ij))
                     + 0.5 * tf.reduce_mean(tf.nn.relu(2.0 + d(i, j) - d(i, k)) + tf.nn.relu(2.0 + d(i, j) - d(j, l))))
    expected = tape.gradient(reference, [embeddings, *pddm.trainable_variables])
    np.testing.assert_allclose(total.numpy(), reference.numpy(), rtol=1e-5)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), tf.convert_to_tensor(want).numpy(),
                                   rtol=1e-4, atol=1e-6)
