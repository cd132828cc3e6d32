"""Retrieval metrics against brute-force numpy references (METHODS.md, section 5)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pddm_tf import evaluation
from pddm_tf.evaluation import (
    RetrievalEvaluation,
    _blas_search,
    embed_dataset,
    evaluate_retrieval,
    format_table,
    map_at_r,
    nearest_neighbors,
    nmi,
    recall_at_k,
    rerank_shortlist,
)

# --------------------------------------------------------------------------- references


def brute_force_knn(queries, gallery, k, exclude_self):
    """Full float64 distance matrix, stable argsort: ties go to the lower gallery index."""
    diff = queries[:, None, :].astype(np.float64) - gallery[None, :, :]
    distances = np.sum(diff * diff, axis=-1)
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    indices = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return indices, np.take_along_axis(distances, indices, axis=1)


def brute_force_retrieval(embeddings, labels, ks):
    """Recall@K, MAP@R and R-Precision with an explicit loop over queries."""
    hits, average_precisions, r_precisions = {k: [] for k in ks}, [], []
    for q in range(len(labels)):
        full = np.sum((embeddings.astype(np.float64) - embeddings[q]) ** 2, axis=1)
        ranking = [j for j in np.argsort(full, kind="stable") if j != q]
        relevant = [labels[j] == labels[q] for j in ranking]
        r = sum(relevant)
        if r == 0:  # singleton class: excluded from every retrieval metric
            continue
        for k in ks:
            hits[k].append(any(relevant[:k]))
        precision_sum = sum(np.mean(relevant[: i + 1]) for i in range(r) if relevant[i])
        average_precisions.append(precision_sum / r)
        r_precisions.append(sum(relevant[:r]) / r)
    metrics = {f"recall@{k}": float(np.mean(hits[k])) for k in ks}
    metrics["map@r"] = float(np.mean(average_precisions))
    metrics["r_precision"] = float(np.mean(r_precisions))
    return metrics


def labelled_blobs(seed, n=150, dim=6, n_classes=12):
    """Noisy class clusters plus one singleton class (label 99)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n)
    labels[0] = 99
    centres = rng.normal(size=(100, dim)) * 2.0
    embeddings = centres[labels] + rng.normal(size=(n, dim))
    return embeddings.astype(np.float32), labels


# --------------------------------------------------------------------------- nearest_neighbors


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_nearest_neighbors_self_search_matches_brute_force(chunk_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[280:] = x[:20]  # exact duplicates of the first 20 points

    indices, distances = nearest_neighbors(x, k=10, chunk_size=chunk_size)

    expected_indices, expected_distances = brute_force_knn(x, x, 10, exclude_self=True)
    assert indices.dtype == np.int64 and distances.dtype == np.float32
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-5, atol=1e-4)
    # Self is excluded by index, so a duplicate is still the nearest neighbour, at distance 0
    # up to the float32 cancellation of ||q||^2 - 2 q.g + ||g||^2.
    np.testing.assert_array_equal(indices[:20, 0], np.arange(280, 300))
    np.testing.assert_array_equal(indices[280:, 0], np.arange(20))
    np.testing.assert_allclose(distances[280:, 0], 0.0, atol=1e-5)
    assert not np.any(indices == np.arange(300)[:, None])


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_nearest_neighbors_separate_gallery_matches_brute_force(chunk_size):
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(60, 5)).astype(np.float32)
    gallery = rng.normal(size=(250, 5)).astype(np.float32)
    gallery[17] = queries[3]

    # exclude_self has nothing to exclude in a separate gallery; k may be all of it.
    indices, distances = nearest_neighbors(queries, gallery, k=250, chunk_size=chunk_size)

    expected_indices, expected_distances = brute_force_knn(queries, gallery, 250, exclude_self=False)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-5, atol=1e-4)
    assert indices[3, 0] == 17 and distances[3, 0] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_nearest_neighbors_breaks_ties_by_lower_index(chunk_size):
    # An integer grid, every point twice, shuffled: distances are small integers, exact in
    # float32, so almost every neighbour is tied and only the index rule orders them.
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(6)), axis=-1).reshape(-1, 2)
    x = np.random.default_rng(2).permutation(np.concatenate([grid, grid])).astype(np.float32)

    indices, distances = nearest_neighbors(x, k=20, chunk_size=chunk_size)

    expected_indices, expected_distances = brute_force_knn(x, x, 20, exclude_self=True)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(distances, expected_distances)


def test_nearest_neighbors_tie_order_on_a_line():
    # Points 0, 1, -1, 0: from point 0, point 3 is at 0 and points 1 and 2 tie at 1.
    x = np.array([[0.0], [1.0], [-1.0], [0.0]])
    indices, distances = nearest_neighbors(x, k=3)
    np.testing.assert_array_equal(indices[0], [3, 1, 2])
    np.testing.assert_array_equal(indices[3], [0, 1, 2])
    np.testing.assert_array_equal(distances[0], [0.0, 1.0, 1.0])


@pytest.mark.parametrize("backend", ["numpy", "tf"])
def test_nearest_neighbors_large_input_stays_chunked(monkeypatch, backend):
    x = np.random.default_rng(3).normal(size=(20_000, 64)).astype(np.float32)
    block_shapes = []
    if backend == "tf":
        top_k = tf.math.top_k

        def recording_top_k(values, *args, **kwargs):
            block_shapes.append(tuple(values.shape))
            return top_k(values, *args, **kwargs)

        monkeypatch.setattr(tf.math, "top_k", recording_top_k)
    else:
        merge = _blas_search._merge_scores

        def recording_merge(scores, *args):
            block_shapes.append(scores.shape)
            return merge(scores, *args)

        monkeypatch.setattr(_blas_search, "_merge_scores", recording_merge)
    indices, distances = nearest_neighbors(x, k=8, chunk_size=512, backend=backend)

    assert indices.shape == distances.shape == (20_000, 8)
    # Never a 20,000 x 20,000 block: at most chunk_size x the default gallery chunk, the bound the
    # docstring's memory figure is computed from (a self-search's square blocks hold half of it).
    limit = 512 * evaluation.DEFAULT_GALLERY_CHUNK_SIZES[backend]
    assert max(rows * columns for rows, columns in block_shapes) <= limit
    assert max(rows for rows, _ in block_shapes) < 20_000
    sample = np.random.default_rng(4).choice(20_000, size=50, replace=False)
    full = np.stack([np.sum((x - x[q].astype(np.float64)) ** 2, axis=1) for q in sample])
    full[np.arange(50), sample] = np.inf
    expected_indices = np.argsort(full, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(indices[sample], expected_indices)
    np.testing.assert_allclose(
        distances[sample], np.take_along_axis(full, expected_indices, axis=1), rtol=1e-4
    )


def test_nearest_neighbors_rejects_bad_input():
    x = np.zeros((5, 3), np.float32)
    nearest_neighbors(x, k=4)  # every other point: the most a self-search can return
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbors(x, k=5)
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbors(x, x[:2], k=3)
    with pytest.raises(ValueError, match="2-D"):
        nearest_neighbors(np.zeros(5), k=1)
    with pytest.raises(ValueError, match="dimension"):
        nearest_neighbors(x, np.zeros((5, 2)), k=1)
    with pytest.raises(ValueError, match="NaN"):
        nearest_neighbors(np.where(np.eye(5, 3), np.nan, 0.0), k=1)


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_metrics_match_brute_force(seed):
    embeddings, labels = labelled_blobs(seed)
    ks = (1, 2, 4, 8, 16)
    expected = brute_force_retrieval(embeddings, labels, ks)

    recalls = recall_at_k(embeddings, labels, ks=ks, chunk_size=32)
    precisions = map_at_r(embeddings, labels, chunk_size=32)

    assert recalls == pytest.approx({k: v for k, v in expected.items() if k.startswith("recall")})
    assert precisions == pytest.approx({k: expected[k] for k in ("map@r", "r_precision")})


def test_retrieval_metrics_hand_computed():
    # Points on a line, with a singleton class B (excluded) and R = 2 for every A query:
    #   query 0 (A at 0): neighbours 1 (B), 2 (A), 3 (A) -> rel 0,1 -> AP = (1/2)(1/2) = 1/4
    #   query 2 (A at 2): neighbours 1 (B), 0 (A), 3 (A) -> rel 0,1 -> AP = 1/4
    #   query 3 (A at 5): neighbours 2 (A), 1 (B), 0 (A) -> rel 1,0 -> AP = (1/2)(1/1) = 1/2
    # MAP@R = (1/4 + 1/4 + 1/2) / 3 = 1/3; R-Precision = 1/2 for each query.
    # Recall@1: only query 3 hits -> 1/3. Recall@2: all three hit -> 1 (3/4 if B counted).
    x = np.array([[0.0], [1.0], [2.0], [5.0]])
    labels = np.array(["A", "B", "A", "A"])

    assert map_at_r(x, labels) == pytest.approx({"map@r": 1 / 3, "r_precision": 1 / 2})
    assert recall_at_k(x, labels, ks=(1, 2)) == pytest.approx({"recall@1": 1 / 3, "recall@2": 1.0})


def test_nmi_equals_the_contingency_table_formula():
    """Three far-apart blobs, so k-means must return the blobs; labels spread over them by a known
    contingency table, whose NMI (arithmetic normalisation) is computed here from its definition."""
    table = np.array([[6, 2, 2], [1, 7, 2], [0, 3, 7]])  # [blob, class] counts
    blobs = np.repeat(np.arange(3), table.sum(axis=1))
    labels = np.concatenate([np.repeat(np.arange(3), row) for row in table]) + 10
    rng = np.random.default_rng(2)
    embeddings = 50.0 * np.eye(3)[blobs] + 0.1 * rng.normal(size=(len(blobs), 3))
    p = table / table.sum()
    p_blob, p_class = p.sum(axis=1), p.sum(axis=0)
    nonzero = p > 0
    mutual = np.sum(p[nonzero] * np.log(p[nonzero] / np.outer(p_blob, p_class)[nonzero]))
    entropy = lambda q: -np.sum(q * np.log(q))  # noqa: E731
    expected = mutual / (0.5 * (entropy(p_blob) + entropy(p_class)))
    assert 0.2 < expected < 0.6  # neither trivial extreme
    assert nmi(embeddings, labels, seed=7) == pytest.approx(expected, rel=1e-9)


def test_nmi_is_one_for_separated_classes():
    rng = np.random.default_rng(6)
    labels = np.repeat([3, 1, 2], 20)
    embeddings = 100.0 * np.eye(4)[labels] + 0.01 * rng.normal(size=(60, 4))
    assert nmi(embeddings, labels) == pytest.approx(1.0)


def test_evaluate_retrieval_agrees_with_individual_metrics():
    embeddings, labels = labelled_blobs(8)
    metrics = evaluate_retrieval(embeddings, labels, chunk_size=50, seed=3)

    expected = {
        **recall_at_k(embeddings, labels),
        "nmi": nmi(embeddings, labels, seed=3),
        **map_at_r(embeddings, labels),
    }
    assert metrics == pytest.approx(expected)
    assert list(metrics) == ["recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r", "r_precision"]


@pytest.mark.parametrize(
    "embeddings, labels, message",
    [
        (np.array([[0.0], [np.nan], [1.0]]), [0, 0, 1], "embeddings contain NaN"),
        (np.array([[0.0], [np.inf], [1.0]]), [0, 0, 1], "inf"),
        (np.zeros(3), [0, 0, 1], "2-D"),
        (np.zeros((3, 2)), [[0, 0, 1]], "1-D"),
        (np.zeros((3, 2)), [0, 0], "labels"),
        (np.zeros((1, 2)), [0], "at least 2 items"),
        (np.zeros((3, 2)), [0, 0, 0], "at least 2 classes"),
        (np.zeros((3, 2)), [0, 1, 2], "singleton"),
    ],
)
def test_evaluate_retrieval_rejects_bad_input(embeddings, labels, message):
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(embeddings, labels)


def test_evaluate_retrieval_rejects_bad_ks():
    with pytest.raises(ValueError, match="ks"):
        evaluate_retrieval(np.zeros((4, 2)), [0, 0, 1, 1], ks=(0, 1))
    with pytest.raises(ValueError, match="k must be"):
        evaluate_retrieval(np.zeros((4, 2)), [0, 0, 1, 1], ks=(1, 8))


def test_format_table_aligns_columns():
    table = format_table({"recall@1": 0.5, "r_precision": 0.123456})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "|", "value"]
    assert lines[2].split() == ["recall@1", "|", "0.5000"]
    assert lines[3].split() == ["r_precision", "|", "0.1235"]
    assert len({line.index("|") if "|" in line else line.index("+") for line in lines}) == 1


# --------------------------------------------------------------------------- Keras integration


def test_embed_dataset_keeps_images_and_labels_aligned_under_reshuffling():
    # Image i is (i, 0) with label i; an identity model embeds it as itself.
    images = np.stack([np.arange(40.0), np.zeros(40)], axis=1).astype(np.float32)
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, np.arange(40)))
        .shuffle(40, seed=0, reshuffle_each_iteration=True)
        .batch(8)
    )
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(2, kernel_initializer="identity", bias_initializer="zeros")]
    )

    embeddings, labels = embed_dataset(model, dataset)

    assert embeddings.shape == (40, 2) and sorted(labels) == list(range(40))
    np.testing.assert_array_equal(embeddings[:, 0], labels)


def test_embed_dataset_runs_one_graph_per_model_that_follows_its_weights_and_dies_with_it():
    """The forward pass is traced once per model (a short last batch included) and reused by later
    calls, gives the eager call's embeddings after the weights change, and is dropped with the model."""
    import gc
    import weakref

    from pddm_tf.evaluation import callbacks

    rng = np.random.default_rng(0)
    images = rng.normal(size=(21, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(21))).batch(8)  # 8, 8, 5
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])

    first, _ = embed_dataset(model, dataset)
    np.testing.assert_allclose(first, model(images).numpy(), rtol=1e-6, atol=1e-6)
    model.set_weights([w + 1.0 for w in model.get_weights()])
    second, _ = embed_dataset(model, dataset)
    np.testing.assert_allclose(second, model(images).numpy(), rtol=1e-6, atol=1e-6)
    assert np.abs(second - first).max() > 0.1
    forward = callbacks._INFERENCE[model]
    assert forward.experimental_get_tracing_count() <= 2  # batch 8, then batch None at most

    gc.collect()  # models of earlier tests leave the cache now, not during the check
    owner, cached = weakref.ref(model), len(callbacks._INFERENCE)
    del model, forward
    gc.collect()
    assert owner() is None and len(callbacks._INFERENCE) == cached - 1


def test_callback_logs_match_evaluate_retrieval():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(9)
    val_images = rng.normal(size=(64, 2)).astype(np.float32)
    val_labels = rng.integers(0, 4, size=64)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    callback = RetrievalEvaluation(
        tf.data.Dataset.from_tensor_slices((val_images, val_labels)).batch(16), chunk_size=10
    )

    history = model.fit(
        rng.normal(size=(32, 2)), rng.normal(size=(32, 3)), epochs=2, callbacks=[callback], verbose=0
    )

    expected = evaluate_retrieval(model.predict(val_images, verbose=0), val_labels, chunk_size=10)
    assert len(history.history["val_recall@1"]) == 2
    for name, value in expected.items():
        assert history.history["val_" + name][-1] == pytest.approx(value)
    assert [epoch for epoch, _ in callback.history] == [0, 1]
    assert callback.history[-1][1] == pytest.approx(expected)


def test_callback_runs_every_n_epochs_and_on_the_last():
    rng = np.random.default_rng(10)
    dataset = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(20, 2)).astype(np.float32), np.arange(20) % 2)
    ).batch(10)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    callback = RetrievalEvaluation(dataset, every=2, ks=(1,))

    model.fit(rng.normal(size=(8, 2)), rng.normal(size=(8, 2)), epochs=5, callbacks=[callback], verbose=0)

    assert [epoch for epoch, _ in callback.history] == [1, 3, 4]


# ----------------------------------------------------------------------------------------
# PDDM ranking: re-ranking a Euclidean shortlist by a learned pair score
# ----------------------------------------------------------------------------------------


def _negative_l1(a, b):
    """A pair score whose order differs from Euclidean distance's: -||a - b||_1."""
    return -np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum(axis=1)


@pytest.mark.parametrize("shortlist", [1, 5, 12])
def test_reranked_recall_matches_brute_force(shortlist):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(90, 6)).astype(np.float32)
    y = rng.integers(0, 12, size=90)
    d = ((x[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    expected_hits = {k: [] for k in (1, 2, 4, 8)}
    for q in range(90):
        if (y == y[q]).sum() < 2:
            continue
        order = list(np.argsort(d[q], kind="stable"))
        top = order[:shortlist]
        scores = _negative_l1(np.repeat(x[q:q + 1], len(top), 0), x[top])
        reranked = [top[i] for i in np.argsort(-scores, kind="stable")] + order[shortlist:]
        for k in expected_hits:
            expected_hits[k].append(any(y[j] == y[q] for j in reranked[:k]))
    metrics = evaluate_retrieval(x, y, rerank=shortlist, pair_scores=_negative_l1)
    for k, hits in expected_hits.items():
        assert metrics[f"recall@{k}"] == pytest.approx(np.mean(hits)), k


def test_rerank_shortlist_keeps_candidates_and_breaks_ties_by_position():
    shortlist = np.array([[4, 2, 7], [1, 0, 3]])
    q = np.zeros((2, 1), np.float32)
    g = np.arange(8, dtype=np.float32)[:, None]
    # Score: 1 for even gallery ids, 0 for odd ones; equal scores keep their shortlist order.
    reranked = rerank_shortlist(q, g, shortlist, lambda a, b: (b[:, 0] % 2 == 0).astype(np.float32), batch_pairs=4)
    np.testing.assert_array_equal(reranked, [[4, 2, 7], [0, 1, 3]])


def test_rerank_needs_a_score():
    with pytest.raises(ValueError, match="pair_scores"):
        evaluate_retrieval(np.eye(4, dtype=np.float32), [0, 0, 1, 1], rerank=2)


# --------------------------------------------------------------------------- pair similarities


def test_pair_similarities_match_a_pair_loop():
    """Every positive pair once, a seeded sample of negatives (all of them when fewer), the score
    taken in small batches agreeing with one call per pair."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.integers(0, 6, size=30)
    pairs = [(i, j) for i in range(30) for j in range(i + 1, 30)]
    positive = [(i, j) for i, j in pairs if y[i] == y[j]]
    negative = {(i, j) for i, j in pairs if y[i] != y[j]}
    out = evaluation.pair_similarities(x, y, _negative_l1, negatives_per_positive=2, seed=3, batch_pairs=7)
    expected = [-np.sum((x[i].astype(np.float64) - x[j]) ** 2) for i, j in positive]
    np.testing.assert_allclose(np.sort(out["positive"]["euclidean"]), np.sort(expected), rtol=1e-5)
    np.testing.assert_allclose(np.sort(out["positive"]["score"]),
                               np.sort([_negative_l1(x[i:i + 1], x[j:j + 1])[0] for i, j in positive]), rtol=1e-5)
    assert len(out["negative"]["euclidean"]) == len(out["negative"]["score"]) == 2 * len(positive)
    # Each sampled negative is a distinct negative pair: its distance and score belong to one pair of the set.
    lookup = {round(float(-np.sum((x[i].astype(np.float64) - x[j]) ** 2)), 4): (i, j) for i, j in negative}
    found = {lookup[round(float(d), 4)] for d in out["negative"]["euclidean"]}
    assert len(found) == 2 * len(positive)
    again = evaluation.pair_similarities(x, y, None, negatives_per_positive=2, seed=3)
    assert set(again["negative"]) == {"euclidean"}
    np.testing.assert_array_equal(again["negative"]["euclidean"], out["negative"]["euclidean"])
    everything = evaluation.pair_similarities(x, y, negatives_per_positive=10_000)
    assert len(everything["negative"]["euclidean"]) == len(negative)


def test_pair_similarities_of_separated_classes_do_not_overlap():
    x = np.repeat(np.eye(3, dtype=np.float32) * 10, 4, axis=0) + np.random.default_rng(0).normal(
        scale=0.01, size=(12, 3)).astype(np.float32)
    y = np.repeat(np.arange(3), 4)
    out = evaluation.pair_similarities(x, y)
    assert evaluation.distribution_overlap(out["positive"]["euclidean"], out["negative"]["euclidean"]) == 0.0


@pytest.mark.parametrize("labels, options, message", [
    ([0, 1, 2, 3], {}, "singleton"),
    ([0, 0, 0, 0], {}, "2 classes"),
    ([0, 0, 1, 1], {"negatives_per_positive": 0}, "negatives_per_positive"),
])
def test_pair_similarities_rejects_bad_input(labels, options, message):
    with pytest.raises(ValueError, match=message):
        evaluation.pair_similarities(np.eye(4, dtype=np.float32), labels, **options)


def test_pair_similarities_refuses_a_set_too_large_to_enumerate(monkeypatch):
    from pddm_tf.evaluation import retrieval

    monkeypatch.setattr(retrieval, "MAX_PAIR_SIMILARITY_ITEMS", 5)
    with pytest.raises(ValueError, match="over the limit of 5"):
        evaluation.pair_similarities(np.eye(6, dtype=np.float32), [0, 0, 1, 1, 2, 2])
