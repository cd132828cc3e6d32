"""Few-shot classification of held-out classes by nearest prototype (METHODS.md section 6).

The classic test of an embedding on characters never seen in training (Lake et al., 2015): an
N-way K-shot *episode* draws N classes of one group (an Omniglot alphabet), K support images of
each from one set of drawers and one query image of each from a different drawer; a query is
correct when the nearest class prototype (the mean of its K support embeddings) has its label.

`few_shot_accuracy` runs seeded episodes over embeddings already computed; `episode_metadata`
reads the groups and drawers of an `ImageFiles` list; `evaluate_few_shot` runs several settings
("20way1shot", ...) and returns them under the names `pddm-tf` writes to its JSON.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from pddm_tf.data import ImageFiles

#: Drawer of an Omniglot-style file name, `<character id>_<drawer>.<ext>`.
_DRAWER_NAME = re.compile(r"^[^_]+_(\d+)$")
_SETTING = re.compile(r"^(\d+)way(\d+)shot$")
#: Two-sided 95% normal quantile, for the confidence interval of the mean over episodes.
_Z95 = 1.959963984540054
_SHOT_WORDS = {1: "one", 5: "five"}


class ImpossibleSettingError(ValueError):
    """No group of the held-out classes can fill an N-way K-shot episode."""


@dataclasses.dataclass(frozen=True)
class FewShotResult:
    """Accuracy of a few-shot setting.

    Attributes:
      accuracy: mean accuracy over queries and episodes, in [0, 1].
      ci95: half-width of the 95% confidence interval of that mean over episodes (normal
        approximation, 1.96 x the standard error of the episode accuracies).
      episodes: number of episodes run.
      ways, shots: N and K.
    """

    accuracy: float
    ci95: float
    episodes: int
    ways: int
    shots: int


@dataclasses.dataclass(frozen=True)
class Episode:
    """One episode, as row indices into the embeddings: support [N, K] and query [N, Q]; row c
    of each belongs to the episode's c-th class."""

    support: np.ndarray
    query: np.ndarray


def parse_setting(setting: str) -> tuple[int, int]:
    """"20way1shot" -> (20, 1); a ValueError naming the expected form otherwise."""
    match = _SETTING.match(setting.strip().lower())
    if not match or int(match[1]) < 2 or int(match[2]) < 1:
        raise ValueError(f"few-shot setting {setting!r} must read '<N>way<K>shot' with N >= 2 and K >= 1, "
                         "e.g. 20way1shot")
    return int(match[1]), int(match[2])


def setting_key(ways: int, shots: int) -> str:
    """The metric name of a setting: (20, 1) -> "oneshot_20way", (20, 5) -> "fiveshot_20way"."""
    return f"{_SHOT_WORDS.get(shots, str(shots))}shot_{ways}way"


def episode_metadata(files: ImageFiles, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Group and drawer of every file, for `few_shot_accuracy`.

    - Group: the first component of the class name ("Greek" for "Greek/character01", also for
      its rotated copies "Greek/character01/rot90"), i.e. the top-level folder. When no class
      name has a "/" (a flat folder of classes) every class is in one group.
    - Drawer: parsed from file names of the form `<id>_<drawer>.<ext>` (Omniglot's: the 20
      drawers are 20 people). If any file name does not follow it, drawers are random instead:
      each class's images get distinct ids 0..n_c-1 in an order seeded by `seed`.

    Returns:
      (groups [n] int32, drawers [n] int32).
    """
    names = np.array(files.class_names)
    if any("/" in name for name in names):
        group_of_class = np.unique([name.split("/", 1)[0] for name in names], return_inverse=True)[1]
    else:
        group_of_class = np.zeros(len(names), np.int64)
    groups = group_of_class[files.labels].astype(np.int32)
    matches = [_DRAWER_NAME.match(pathlib.PurePath(str(path)).stem) for path in files.paths]
    if all(matches):
        drawers = np.array([int(m[1]) for m in matches], np.int32)  # type: ignore[index]
    else:
        rng = np.random.default_rng(seed)
        drawers = np.zeros(len(files), np.int32)
        for label in np.unique(files.labels):
            rows = np.flatnonzero(files.labels == label)
            drawers[rows] = rng.permutation(len(rows))
    return groups, drawers


def sample_episodes(labels: ArrayLike, groups: ArrayLike | None = None, drawers: ArrayLike | None = None,
                    ways: int = 20, shots: int = 1, episodes: int = 400, queries: int = 1,
                    seed: int = 0) -> list[Episode]:
    """Seeded N-way K-shot episodes (METHODS.md section 6).

    Each episode picks a group uniformly among the groups with at least N eligible classes (a
    class is eligible when it has images of at least K + Q distinct drawers), then N of its
    eligible classes. It orders the drawers at random, the same order for all N classes (as
    Lake's runs: support from one set of people, queries from another); each class's support
    is its images of its first K drawers in that order and its queries its images of the next
    Q drawers (one image per drawer). Support and query drawers are therefore disjoint.

    Args:
      labels: [n] int class ids.
      groups: [n] int group per image (constant within a class); None = one group.
      drawers: [n] int drawer per image; None = every image its own drawer.
      ways: N; shots: K; queries: Q per class; episodes: number of episodes; seed: their seed.

    Raises:
      ValueError: bad sizes. ImpossibleSettingError (a ValueError): no group with N eligible
        classes (the message says how many eligible classes the largest group has).
    """
    labels = np.asarray(labels)
    n = len(labels)
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    drawers = np.arange(n) if drawers is None else np.asarray(drawers)
    if labels.ndim != 1 or groups.shape != labels.shape or drawers.shape != labels.shape:
        raise ValueError(f"labels, groups and drawers must be [n] arrays of one length, got shapes "
                         f"{labels.shape}, {groups.shape}, {drawers.shape}")
    for name, value in (("ways", ways), ("shots", shots), ("episodes", episodes), ("queries", queries)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if ways < 2:
        raise ValueError(f"ways must be >= 2, got {ways}")
    # Per class: its rows, one per drawer (the first in file order if a drawer drew twice).
    by_class: dict[int, dict[int, int]] = {}
    for row in range(n):
        by_class.setdefault(int(labels[row]), {}).setdefault(int(drawers[row]), row)
    eligible: dict[int, list[int]] = {}
    for label, rows_by_drawer in by_class.items():
        if len(rows_by_drawer) >= shots + queries:
            eligible.setdefault(int(groups[next(iter(rows_by_drawer.values()))]), []).append(label)
    usable = sorted(g for g, classes in eligible.items() if len(classes) >= ways)
    if not usable:
        largest = max((len(c) for c in eligible.values()), default=0)
        raise ImpossibleSettingError(f"no group has {ways} classes with {shots + queries} images by distinct drawers "
                         f"(the largest has {largest}); use fewer ways or shots")
    all_drawers = np.unique(drawers)
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(episodes):
        group = usable[rng.integers(len(usable))]
        classes = rng.choice(sorted(eligible[group]), size=ways, replace=False)
        rank = {int(d): r for r, d in enumerate(rng.permutation(all_drawers))}
        picked = []
        for label in classes:
            rows_by_drawer = by_class[int(label)]
            ordered = sorted(rows_by_drawer, key=rank.__getitem__)[: shots + queries]
            picked.append([rows_by_drawer[d] for d in ordered])
        picked_rows = np.array(picked, np.int64)
        result.append(Episode(support=picked_rows[:, :shots], query=picked_rows[:, shots:]))
    return result


def few_shot_accuracy(embeddings: ArrayLike, labels: ArrayLike, groups: ArrayLike | None = None,
                      drawers: ArrayLike | None = None, ways: int = 20, shots: int = 1, episodes: int = 400,
                      queries: int = 1, seed: int = 0) -> FewShotResult:
    """N-way K-shot accuracy of nearest-prototype classification (METHODS.md section 6).

    Episodes come from `sample_episodes`; in each, a class's prototype is the mean of its K
    support embeddings and a query is classified by the prototype at the smallest Euclidean
    distance (ties to the first class). With K = 1 this is plain one-nearest-neighbour.

    Args:
      embeddings: [n, d] float, the held-out images' embeddings.
      labels, groups, drawers, ways, shots, episodes, queries, seed: see `sample_episodes`.

    Returns:
      A `FewShotResult`: mean accuracy and its 95% confidence half-width over episodes.

    Example (three well-separated classes of two images each, 2-way 1-shot):
      >>> embeddings = [[0, 0], [0, 0.1], [5, 0], [5, 0.1], [0, 5], [0.1, 5]]
      >>> result = few_shot_accuracy(embeddings, [0, 0, 1, 1, 2, 2], ways=2, shots=1, episodes=5)
      >>> result.accuracy, result.ci95, result.episodes
      (1.0, 0.0, 5)
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(np.asarray(labels)):
        raise ValueError(f"embeddings must be [n, d] with n = len(labels) = {len(np.asarray(labels))}, "
                         f"got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or inf")
    scores = []
    for episode in sample_episodes(labels, groups, drawers, ways, shots, episodes, queries, seed):
        prototypes = x[episode.support].mean(axis=1)                      # [N, d]
        query = x[episode.query]                                          # [N, Q, d]
        distances = ((query[:, :, None, :] - prototypes[None, None]) ** 2).sum(-1)  # [N, Q, N]
        predicted = distances.argmin(-1)
        scores.append(np.mean(predicted == np.arange(ways)[:, None]))
    scores_array = np.array(scores)
    spread = scores_array.std(ddof=1) if len(scores_array) > 1 else 0.0
    return FewShotResult(accuracy=float(scores_array.mean()), ci95=float(_Z95 * spread / math.sqrt(len(scores))),
                         episodes=len(scores), ways=ways, shots=shots)


def evaluate_few_shot(embeddings: ArrayLike, files: ImageFiles, settings: Sequence[str] = ("20way1shot",),
                      episodes: int = 400, seed: int = 0) -> dict[str, float]:
    """Few-shot accuracies of `files`' embeddings for each setting ("20way1shot", "5way1shot", ...).

    Groups and drawers come from `episode_metadata(files)`. Rotated copies (`files.rotations`
    non-zero, training-time augmentation) are left out: episodes use the images as they are.

    Returns:
      {"oneshot_20way": accuracy, "oneshot_20way_ci95": half-width, ...} (`setting_key` names).
    """
    x = np.asarray(embeddings)
    if len(x) != len(files):
        raise ValueError(f"{len(x)} embeddings for {len(files)} files")
    groups, drawers = episode_metadata(files, seed)
    upright = files.rotations == 0
    metrics: dict[str, float] = {}
    for setting in settings:
        ways, shots = parse_setting(setting)
        result = few_shot_accuracy(x[upright], files.labels[upright], groups[upright], drawers[upright], ways,
                                   shots, episodes, seed=seed)
        key = setting_key(ways, shots)
        metrics[key] = result.accuracy
        metrics[f"{key}_ci95"] = result.ci95
    return metrics
