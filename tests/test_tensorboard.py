"""`pddm_tf.training.tensorboard`: the event files and projector files read back and checked against known values."""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import pddm_tf
from pddm_tf import data, evaluation
from pddm_tf.evaluation import visualize
from pddm_tf.training.tensorboard import TensorBoard, write_projector


def _events(folder: pathlib.Path) -> dict[str, list[tuple[int, object]]]:
    """tag -> [(step, value)] of every event file in `folder`: scalars as float, images as uint8 arrays."""
    found: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tensor = value.tensor
                if tensor.string_val:  # an image: [width, height, png bytes]
                    item = tf.io.decode_png(tensor.string_val[2]).numpy()
                else:
                    item = float(tf.make_ndarray(tensor))
                found.setdefault(value.tag, []).append((event.step, item))
    return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("tb")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.random((48, 8, 8, 1), dtype=np.float32), np.repeat(np.arange(8), 6)
    x_eval, y_eval = rng.random((24, 8, 8, 1), dtype=np.float32), np.repeat(np.arange(6), 4)
    model = pddm_tf.PDDMModel(pddm_tf.small_convnet(8, 1, width=4, depth=2), embedding_dim=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    held_out = tf.data.Dataset.from_tensor_slices((x_eval, y_eval)).batch(10)
    retrieval = evaluation.RetrievalEvaluation(held_out, every=2)
    board = TensorBoard(log_dir, retrieval, load_images=lambda rows: x_eval[rows], num_queries=3, k=4,
                        class_names=[f"c{i}" for i in range(6)], update_freq=2)
    history = model.fit(data.class_balanced_dataset_from_arrays(x, y, 4, 3), epochs=3, steps_per_epoch=2,
                        callbacks=[retrieval, board], verbose=0)
    return log_dir, model, history, retrieval, x_eval, y_eval


def test_scalars_are_the_keras_logs_and_the_held_out_metrics(trained):
    log_dir, model, history, retrieval, x_eval, y_eval = trained
    train = _events(log_dir / "train")
    for name in ("loss", "metric_loss", "embedding_loss", "valid_fraction", "score_gap"):
        steps, values = zip(*train[name])
        assert steps == (0, 1, 2)
        np.testing.assert_allclose(values, history.history[name], rtol=1e-6)
    assert [step for step, _ in train["batch_loss"]] == [2, 4, 6]  # every 2 batches, at the optimiser step
    held_out = _events(log_dir / "held_out")
    # every=2 over 3 epochs: epoch 1 (0-based) and the final epoch 2.
    assert [step for step, _ in held_out["recall@1"]] == [1, 2]
    # The final figures, recomputed from the trained model by brute force.
    embeddings = model.predict(x_eval, verbose=0)
    distances = ((embeddings[:, None] - embeddings[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1, kind="stable")
    for k in (1, 2, 4):
        expected = np.mean([(y_eval[nearest[i, :k]] == y_eval[i]).any() for i in range(len(y_eval))])
        assert held_out[f"recall@{k}"][-1][1] == pytest.approx(expected, abs=1e-6)
    assert held_out["nmi"][-1][1] == pytest.approx(retrieval.history[-1][1]["nmi"], abs=1e-6)


def test_retrieval_grid_image_frames_hits_green_and_misses_red(trained):
    log_dir, model, _, _, x_eval, y_eval = trained
    images = _events(log_dir / "held_out")["retrieval"]
    assert [step for step, _ in images] == [1, 2]
    grid = images[-1][1]
    queries, _, _ = visualize.retrieval_examples(model.predict(x_eval, verbose=0), y_eval, 3, 4, seed=0)
    embeddings = model.predict(x_eval, verbose=0)
    distances = ((embeddings[:, None] - embeddings[None]) ** 2).sum(-1)
    green, red = (np.array(visualize.HIT_COLOR) * 255).round(), (np.array(visualize.MISS_COLOR) * 255).round()
    for row, q in enumerate(queries):
        order = [j for j in np.argsort(distances[q], kind="stable") if j != q][:4]
        for column, j in enumerate(order, start=1):
            y0, x0 = visualize.grid_cell_origin(row, column, 8)
            frame = grid[y0, x0, :3]
            np.testing.assert_array_equal(frame, green if y_eval[j] == y_eval[q] else red)
            # The cell holds the neighbour's own pixels.
            np.testing.assert_allclose(grid[y0 + 2:y0 + 10, x0 + 2:x0 + 10, 0] / 255, x_eval[j, :, :, 0], atol=1 / 255)


def test_projector_files_hold_the_final_embeddings_labels_and_images(trained):
    log_dir, model, _, _, x_eval, y_eval = trained
    config = (log_dir / "projector_config.pbtxt").read_text()
    assert 'tensor_path: "projector/embeddings.tsv"' in config and "single_image_dim: 8" in config
    written = np.loadtxt(log_dir / "projector" / "embeddings.tsv", delimiter="\t")
    np.testing.assert_allclose(written, model.predict(x_eval, verbose=0), atol=1e-5)
    metadata = (log_dir / "projector" / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "label\tclass" and metadata[1:] == [f"{c}\tc{c}" for c in y_eval]
    sprite = tf.io.decode_png(tf.io.read_file(str(log_dir / "projector" / "sprite.png"))).numpy()
    assert sprite.shape == (5 * 8, 5 * 8, 3)  # 24 items: 5 x 5 tiles of 8 pixels
    np.testing.assert_allclose(sprite[8:16, 24:32, 0] / 255, x_eval[5 + 3, :, :, 0], atol=1 / 255)  # row 1, column 3
    assert (sprite[32:, 32:] == 255).all()  # the 25th tile is empty


def test_projector_subsamples_and_shrinks_the_sprite(tmp_path, monkeypatch):
    monkeypatch.setattr("pddm_tf.training.tensorboard.MAX_SPRITE_SIZE", 20)
    images = np.random.default_rng(0).random((30, 8, 8, 3), dtype=np.float32)
    rows = write_projector(tmp_path, np.eye(30, 4), np.arange(30) % 3, lambda r: images[r], max_points=9)
    assert len(rows) == 9 and rows == sorted(set(rows))
    sprite = tf.io.decode_png(tf.io.read_file(str(tmp_path / "projector" / "sprite.png"))).numpy()
    assert sprite.shape == (18, 18, 3)  # 3 x 3 tiles of 20 // 3 = 6 pixels
    np.testing.assert_allclose(np.loadtxt(tmp_path / "projector" / "embeddings.tsv"), np.eye(30, 4)[rows])
