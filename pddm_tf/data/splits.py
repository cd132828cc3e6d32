"""Splits by class: which classes are held out (at random, or whole groups such as alphabets), and the
resulting train / test `ImageFiles`; the checks of split arguments every loader shares."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pddm_tf.data.files import ImageFiles

SPLIT_BY = ("character", "alphabet")


def check_test_fraction(test_fraction: float) -> None:
    if not 0 <= test_fraction < 1:  # Also rejects NaN.
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")


def check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


def test_class_mask(class_names: tuple[str, ...], test_fraction: float, split_by: str,
                     test_groups: Sequence[str] | None, seed: int) -> np.ndarray:
    """[C] bool, True for the held-out classes: `test_groups` by name, else a seeded random
    `test_fraction` of the classes (`split_by="character"`) or of whole groups ("alphabet")."""
    check_test_fraction(test_fraction)
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    groups = np.array([name.split("/")[0] for name in class_names])
    if test_groups is not None:
        unknown = sorted(set(test_groups) - set(groups))
        if unknown:
            raise ValueError(f"unknown test group(s) {unknown}; the groups (top-level folders) are "
                             f"{sorted(set(groups))}")
        return np.isin(groups, list(test_groups))
    rng = np.random.default_rng(seed)
    if split_by == "character":
        return random_class_mask(len(class_names), test_fraction, rng)
    return _random_group_mask(groups, test_fraction, rng)


def random_class_mask(num_classes: int, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """[C] bool, True for the `round(test_fraction * C)` classes first in a random order."""
    mask = np.zeros(num_classes, dtype=bool)
    mask[rng.permutation(num_classes)[: round(test_fraction * num_classes)]] = True
    return mask


def _random_group_mask(groups: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """[C] bool over classes grouped by `groups` ([C] names): whole groups, taken in a
    random order until at least `test_fraction` of the classes are selected."""
    if test_fraction == 0:
        return np.zeros(len(groups), dtype=bool)
    names, group_of_class = np.unique(groups, return_inverse=True)
    order = rng.permutation(len(names))
    sizes = np.bincount(group_of_class)[order]
    num_taken = int(np.searchsorted(np.cumsum(sizes), test_fraction * len(groups))) + 1
    return np.isin(group_of_class, order[:num_taken])


def split_classes(
    paths: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    test_mask: np.ndarray,
    test_fraction: float,
) -> tuple[ImageFiles, ImageFiles | None]:
    """Train / test `ImageFiles` of the classes outside / inside `test_mask` ([C] bool)."""
    num_test = int(test_mask.sum())
    if num_test == len(class_names) or (test_fraction > 0 and num_test == 0):
        raise ValueError(
            f"test_fraction={test_fraction} puts {num_test} of {len(class_names)} classes in test; "
            "both train and test need at least one class"
        )
    train = _subset(paths, labels, class_names, ~test_mask)
    return train, (_subset(paths, labels, class_names, test_mask) if num_test else None)


def _subset(
    paths: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], keep: np.ndarray
) -> ImageFiles:
    """The files of the classes where `keep` ([C] bool) is True, relabelled 0..kept-1."""
    rows = keep[labels]
    new_label = np.cumsum(keep) - 1  # Old label -> rank among the kept classes.
    return ImageFiles(
        paths=paths[rows],
        labels=new_label[labels[rows]],
        class_names=tuple(name for name, k in zip(class_names, keep) if k),
        rotations=np.zeros(rows.sum(), dtype=np.int32),
    )
