"""The settings whose default depends on the dataset: `None` in a `TrainConfig` until
`TrainConfig.resolved()` gives them the value of this table for its dataset.

Handwritten characters (omniglot, tfds_omniglot) train on 32 x 4 batches with 90/180/270-degree
rotations as new classes and small affine distortions: with the margin loss at 1,000 steps the three
together gain 4.4 points of held-out 20-way 1-shot accuracy over the 4 folds of METHODS.md section 6
(0.786 against 0.742), and neither the augmentations nor the larger batches help alone (METHODS.md
section 9; benchmarks/results/recipe_losses.md section 2). Other datasets keep 16 x 4 batches and
neither: a rotated photograph is not a new class (a bird upside down is the same species), the
distortions are a character's, and a folder of a few dozen classes may not fill 32 classes a batch.
No TensorFlow import here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: The datasets of handwritten characters: the first column of `DATASET_DEFAULTS`.
CHARACTER_DATASETS = frozenset({"omniglot", "tfds_omniglot"})

#: flag -> (its default for characters, for any other dataset).
DATASET_DEFAULTS: dict[str, tuple[Any, Any]] = {"batch_classes": (32, 16), "rotations": (True, False),
                                                "affine": (True, False)}


def defaults_for(dataset: str, flags: Iterable[str], augment: bool = False) -> dict[str, Any]:
    """flag -> its default on `dataset`, for `flags` (names in `DATASET_DEFAULTS`); affine stays off with
    `augment` (crop and flip), its alternative."""
    column = 0 if dataset in CHARACTER_DATASETS else 1
    values = {flag: DATASET_DEFAULTS[flag][column] for flag in sorted(flags)}
    if "affine" in values and augment:
        values["affine"] = False
    return values
