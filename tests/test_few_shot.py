"""Few-shot episodes and nearest-prototype accuracy (METHODS.md section 6)."""

import numpy as np
import pytest

from pddm_tf import data
from pddm_tf.evaluation import few_shot


def _synthetic(classes_per_group=(6, 5), images=4, dim=3, seed=0, separated=False):
    """Labels, groups, drawers and embeddings of a tiny held-out set: every class has `images`
    images, one per drawer 0..images-1."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    label = 0
    for group, count in enumerate(classes_per_group):
        for _ in range(count):
            labels += [label] * images
            groups += [group] * images
            label += 1
    labels, groups = np.array(labels), np.array(groups)
    drawers = np.tile(np.arange(images), label)
    if separated:
        centres = rng.normal(size=(label, dim)) * 100
        x = centres[labels] + rng.normal(size=(len(labels), dim))
    else:
        x = rng.normal(size=(len(labels), dim))
    return x, labels, groups, drawers


def _brute_force(x, labels, groups, drawers, episodes, ways, shots):
    """Accuracy of the given episodes, by explicit loops over queries and classes (float64)."""
    scores = []
    for episode in episodes:
        classes = [labels[row[0]] for row in episode.support]
        correct = 0
        total = 0
        for query_rows in episode.query:
            for q in query_rows:
                best, best_distance = None, np.inf
                for k, support_rows in enumerate(episode.support):
                    prototype = sum(x[r] for r in support_rows) / len(support_rows)
                    distance = sum((x[q][i] - prototype[i]) ** 2 for i in range(x.shape[1]))
                    if distance < best_distance:
                        best, best_distance = k, distance
                correct += classes[best] == labels[q]
                total += 1
        scores.append(correct / total)
    return np.mean(scores), np.std(scores, ddof=1)


@pytest.mark.parametrize("ways, shots", [(5, 1), (3, 2), (6, 3)])
def test_accuracy_matches_a_brute_force_loop_over_the_episodes(ways, shots):
    x, labels, groups, drawers = _synthetic()
    result = few_shot.few_shot_accuracy(x, labels, groups, drawers, ways=ways, shots=shots, episodes=60, seed=3)
    episodes = few_shot.sample_episodes(labels, groups, drawers, ways=ways, shots=shots, episodes=60, seed=3)
    mean, std = _brute_force(x, labels, groups, drawers, episodes, ways, shots)
    assert result.accuracy == pytest.approx(mean, abs=1e-12)
    assert result.ci95 == pytest.approx(1.959964 * std / np.sqrt(60), rel=1e-5)
    assert (result.episodes, result.ways, result.shots) == (60, ways, shots)


def test_episodes_follow_the_protocol():
    x, labels, groups, drawers = _synthetic(classes_per_group=(6, 5, 2))
    episodes = few_shot.sample_episodes(labels, groups, drawers, ways=5, shots=2, episodes=200, seed=0)
    seen_groups = set()
    for episode in episodes:
        assert episode.support.shape == (5, 2) and episode.query.shape == (5, 1)
        rows = np.concatenate([episode.support, episode.query], axis=1)
        # One class per row, N distinct classes, all of one group.
        assert all(len(set(labels[r])) == 1 for r in rows)
        assert len(set(labels[rows[:, 0]])) == 5
        assert len(set(groups[rows.ravel()])) == 1
        seen_groups.add(groups[rows[0, 0]])
        # Support and query drawers are disjoint, and the same drawers for every class (Lake's runs).
        assert set(drawers[episode.support.ravel()]).isdisjoint(drawers[episode.query.ravel()])
        assert len({tuple(sorted(drawers[r])) for r in episode.support}) == 1
    assert seen_groups == {0, 1}  # group 2 has too few classes for 5 ways; both others are drawn
    # Seeded: the same seed gives the same episodes.
    again = few_shot.sample_episodes(labels, groups, drawers, ways=5, shots=2, episodes=200, seed=0)
    assert all(np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query)
               for a, b in zip(episodes, again))


def test_a_perfectly_separated_embedding_scores_one():
    x, labels, groups, drawers = _synthetic(separated=True)
    assert few_shot.few_shot_accuracy(x, labels, groups, drawers, ways=5, shots=1, episodes=50).accuracy == 1.0


def test_random_embeddings_score_chance_within_the_interval():
    x, labels, groups, drawers = _synthetic(classes_per_group=(40,), images=6, dim=8, seed=1)
    result = few_shot.few_shot_accuracy(x, labels, groups, drawers, ways=20, shots=1, episodes=400, seed=2)
    assert abs(result.accuracy - 1 / 20) < max(result.ci95, 0.01)
    assert 0 < result.ci95 < 0.02


def test_impossible_settings_and_bad_input_are_refused():
    x, labels, groups, drawers = _synthetic()
    with pytest.raises(few_shot.ImpossibleSettingError, match="no group has 7 classes"):
        few_shot.few_shot_accuracy(x, labels, groups, drawers, ways=7, shots=1)
    with pytest.raises(ValueError, match="no group has 5 classes with 5 images"):
        few_shot.few_shot_accuracy(x, labels, groups, drawers, ways=5, shots=4)
    with pytest.raises(ValueError, match="NaN"):
        few_shot.few_shot_accuracy(np.where(x > 1, np.nan, x), labels, groups, drawers, ways=5)
    with pytest.raises(ValueError, match="<N>way<K>shot"):
        few_shot.parse_setting("20-way")
    assert few_shot.parse_setting("20way5shot") == (20, 5)
    assert few_shot.setting_key(20, 1) == "oneshot_20way" and few_shot.setting_key(20, 5) == "fiveshot_20way"


def test_metadata_of_the_embedded_omniglot():
    split = data.load_omniglot(test_groups=("Greek", "Tagalog"))
    groups, drawers = few_shot.episode_metadata(split.test)
    names = np.array(split.test.class_names)[split.test.labels]
    alphabets = np.array([n.split("/")[0] for n in names])
    # Greek sorts before Tagalog: group ids follow the alphabet names.
    np.testing.assert_array_equal(groups, (alphabets == "Tagalog").astype(int))
    expected = [int(p.rsplit("_", 1)[1].split(".")[0]) for p in split.test.paths]
    np.testing.assert_array_equal(drawers, expected)
    assert set(drawers) == set(range(1, 21))
    assert split.test.num_classes == 24 + 17 and not set(alphabets) - {"Greek", "Tagalog"}


def test_metadata_of_a_folder_without_drawer_names(tmp_path):
    files = data.ImageFiles(paths=[str(tmp_path / f"{c}/img{i}.png") for c in "ab" for i in range(3)],
                            labels=[0, 0, 0, 1, 1, 1], class_names=("a", "b"), rotations=[0] * 6)
    groups, drawers = few_shot.episode_metadata(files, seed=1)
    np.testing.assert_array_equal(groups, 0)  # flat classes: one group
    for label in (0, 1):
        assert sorted(drawers[files.labels == label]) == [0, 1, 2]  # distinct random drawers


def test_evaluate_few_shot_leaves_rotated_copies_out():
    split = data.load_omniglot(test_groups=("Greek",))
    rotated = data.with_rotations(split.test)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(rotated), 4))
    upright = rotated.rotations == 0
    metrics = few_shot.evaluate_few_shot(x, rotated, ("5way1shot",), episodes=30, seed=4)
    groups, drawers = few_shot.episode_metadata(rotated)
    expected = few_shot.few_shot_accuracy(x[upright], rotated.labels[upright], groups[upright], drawers[upright],
                                          ways=5, shots=1, episodes=30, seed=4)
    assert metrics == {"oneshot_5way": expected.accuracy, "oneshot_5way_ci95": expected.ci95}
