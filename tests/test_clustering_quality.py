"""Divide-and-Conquer's cluster-quality figures (`cluster_quality`) and the callback that reports them."""

import math

import keras
import numpy as np
import pytest
from omniglot_training import SIZE, split

from pddm_tf import small_convnet
from pddm_tf.data import ImageFiles
from pddm_tf.methods import build_model, training_pipeline
from pddm_tf.models.clustering import DROPPED, ClusterAssignment, DivideAndConquer, cluster_quality


def _entropy(counts):
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)


def _brute_force(ids, labels, num_clusters):
    """cluster_quality with Python loops and the textbook NMI (MI over the arithmetic mean of the entropies)."""
    ids, labels = [int(i) for i in ids], [int(c) for c in labels]
    fractions = []
    for c in sorted(set(labels)):
        members = [i for i, label in zip(ids, labels) if label == c]
        in_cluster = [sum(1 for i in members if i == k) for k in range(num_clusters)]
        fractions.append(max(in_cluster) / len(members))
    pairs = [(i, c) for i, c in zip(ids, labels) if i != DROPPED]
    n = len(pairs)
    cluster_counts = [sum(1 for i, _ in pairs if i == k) for k in range(num_clusters)]
    classes = sorted({c for _, c in pairs})
    class_counts = [sum(1 for _, c in pairs if c == label) for label in classes]
    mutual = 0.0
    for k in range(num_clusters):
        for label, class_count in zip(classes, class_counts):
            joint = sum(1 for i, c in pairs if i == k and c == label)
            if joint:
                mutual += joint / n * math.log(joint * n / (cluster_counts[k] * class_count))
    mean_entropy = (_entropy(cluster_counts) + _entropy(class_counts)) / 2
    # scikit-learn's conventions where an entropy vanishes: 1 if both labelings are constant, else 0.
    nmi = (1.0 if len(classes) == 1 and sum(1 for s in cluster_counts if s) == 1 else
           mutual / mean_entropy if mean_entropy > 0 else 0.0)
    return {"coherence": sum(fractions) / len(fractions), "nmi": nmi, "dropped": 1 - n / len(ids),
            "size_min": min(cluster_counts), "size_max": max(cluster_counts)}


def _assert_quality(actual, expected):
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-9), name


def test_hand_computed_example():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    ids = np.array([0, 0, 0, 1, 1, 1, DROPPED, 0, 0])
    # Class 0: 3 of its 4 images in cluster 0; class 1: 2 of 3 (one dropped); class 2: 2 of 2.
    coherence = (3 / 4 + 2 / 3 + 1) / 3
    # The 8 kept images: classes (4, 2, 2), clusters (5, 3); joint counts (0,0) 3, (0,1) 1, (1,1) 2, (2,0) 2.
    h_classes = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    h_clusters = -(5 / 8 * math.log(5 / 8) + 3 / 8 * math.log(3 / 8))
    mutual = (3 / 8 * math.log((3 / 8) / (4 / 8 * 5 / 8)) + 1 / 8 * math.log((1 / 8) / (4 / 8 * 3 / 8))
              + 2 / 8 * math.log((2 / 8) / (2 / 8 * 3 / 8)) + 2 / 8 * math.log((2 / 8) / (2 / 8 * 5 / 8)))
    expected = {"coherence": coherence, "nmi": mutual / ((h_classes + h_clusters) / 2), "dropped": 1 / 9,
                "size_min": 3, "size_max": 5}
    _assert_quality(cluster_quality(ids, labels, 2), expected)
    assert expected["nmi"] == pytest.approx(0.4472, abs=1e-4)  # the same sum worked by hand on paper


@pytest.mark.parametrize("num_clusters", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_on_random_ids(num_clusters, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, size=60)
    ids = rng.integers(DROPPED, num_clusters, size=60)
    _assert_quality(cluster_quality(ids, labels, num_clusters), _brute_force(ids, labels, num_clusters))


def test_extremes():
    labels = np.repeat(np.arange(6), 5)
    perfect = cluster_quality(labels % 3, labels, 3)  # every class whole, in cluster c mod 3
    assert perfect["coherence"] == 1.0 and perfect["dropped"] == 0.0
    assert perfect["nmi"] == pytest.approx(_brute_force(labels % 3, labels, 3)["nmi"], abs=1e-9)
    assert cluster_quality(labels, labels, 6)["nmi"] == pytest.approx(1.0)  # clusters are the classes
    spread = cluster_quality(np.tile(np.arange(5), 6), labels, 5)  # each class's 5 images in 5 clusters
    assert spread["coherence"] == pytest.approx(1 / 5) and spread["nmi"] == pytest.approx(0.0, abs=1e-9)
    # An empty cluster counts as size 0; every image dropped gives NMI 0, not NaN.
    assert cluster_quality(np.zeros(30, int), labels, 2)["size_min"] == 0
    nothing = cluster_quality(np.full(30, DROPPED), labels, 2)
    assert nothing["dropped"] == 1.0 and nothing["nmi"] == 0.0 and nothing["coherence"] == 0.0


@pytest.mark.parametrize("ids, labels, match", [
    (np.zeros(4, int), np.zeros(3, int), "one shape"),
    (np.zeros(0, int), np.zeros(0, int), "non-empty"),
    (np.array([0, 2]), np.array([0, 1]), r"ids must lie in \[-1, 2\)"),
    (np.array([0, -2]), np.array([0, 1]), r"ids must lie in \[-1, 2\)"),
    (np.array([0, 1]), np.array([0, -1]), "labels be >= 0"),
    (np.array([0, 1]), np.array([0.0, 1.0]), r"^labels must be integers, got dtype float64$"),
    (np.array([0.5, 1.0]), np.array([0, 1]), r"^ids must be integers, got dtype float64$"),
])
def test_bad_input_is_refused(ids, labels, match):
    with pytest.raises(ValueError, match=match):
        cluster_quality(ids, labels, 2)


def _files(num_classes=16, per_class=4):
    root = split().train
    rows = np.concatenate([np.flatnonzero(root.labels == c)[:per_class] for c in range(num_classes)])
    return ImageFiles(root.paths[rows], np.repeat(np.arange(num_classes), per_class),
                      root.class_names[:num_classes], root.rotations[rows])


def test_callback_reports_the_quality_of_each_clustering_in_the_epoch_logs():
    files = _files()
    keras.utils.set_random_seed(0)
    model = build_model("dc_margin", small_convnet(SIZE, 1, width=8), 8, num_learners=2)
    model.compile(optimizer="adam")
    dataset, callbacks = training_pipeline(model, files, 2, 2, SIZE, 1, seed=0, recluster_every=1, conquer_epochs=1,
                                           steps_per_epoch=2)
    schedule = callbacks[-1]
    assert isinstance(schedule, DivideAndConquer)
    seen = []  # what a later callback (TensorBoard, CSVLogger) reads, and the clustering then in force

    def record(epoch, logs):
        seen.append((dict(logs), schedule.assignment.numpy().copy()))

    history = model.fit(dataset, epochs=3, steps_per_epoch=2, verbose=0,
                        callbacks=[*callbacks, keras.callbacks.LambdaCallback(on_epoch_end=record)])
    assert schedule.epochs_clustered == [-1, 0]  # epoch 2 conquers, so no re-clustering after epoch 1
    assert [q["epoch"] for q in schedule.quality] == [-1, 0]
    for logs, ids in seen:
        _assert_quality({name[len("cluster_"):]: logs[name] for name in logs if name.startswith("cluster_")},
                        _brute_force(ids, files.labels, 2))
    assert history.history["cluster_nmi"] == [logs["cluster_nmi"] for logs, _ in seen]


def test_callback_measures_a_restored_clustering():
    files = _files(num_classes=6)
    assignment = ClusterAssignment(len(files), 2)
    ids = files.labels % 2
    ids[0] = DROPPED
    assignment.assign(ids)  # as a checkpoint restores it: no re-clustering when training begins
    schedule = DivideAndConquer(assignment, files, SIZE, 1)
    schedule.on_train_begin()
    assert schedule.epochs_clustered == [] and schedule.quality[0]["epoch"] is None
    _assert_quality({k: v for k, v in schedule.quality[0].items() if k != "epoch"},
                    _brute_force(ids, files.labels, 2))
