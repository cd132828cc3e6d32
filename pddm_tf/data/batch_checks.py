"""What class-balanced P x K batches a labelled file list allows: steps per pass, and the checks that
refuse a list from which no batch can be built (one ValueError naming the class or count).

Pure NumPy: `pddm_tf.data.sampling` (the batches) and `pddm_tf.models.clustering` (per-cluster
batches) read these counts.
"""

from __future__ import annotations

import logging

import numpy as np

from pddm_tf.data.files import ImageFiles

_logger = logging.getLogger(__name__)

#: What class-balanced batches do with classes of fewer than K images: refuse them, or cycle their images.
SMALL_CLASSES = ("error", "cycle")


def steps_per_pass(files: ImageFiles, batch_classes: int, small_classes: str = "error") -> int:
    """Batches in one pass of `class_balanced_dataset`: E // batch_classes, E the eligible
    classes (every class with small_classes="error", those with >= 2 images with "cycle")."""
    counts = np.bincount(files.labels, minlength=files.num_classes)
    return steps_per_pass_of_counts(counts, batch_classes, small_classes)


def steps_per_pass_of_counts(counts: np.ndarray, batch_classes: int, small_classes: str) -> int:
    """`steps_per_pass` from the images per class, counts [C]."""
    if batch_classes < 1:
        raise ValueError(f"batch_classes must be >= 1, got {batch_classes}")
    if small_classes not in SMALL_CLASSES:
        raise ValueError(f"small_classes must be one of {SMALL_CLASSES}, got {small_classes!r}")
    if small_classes == "error":
        return len(counts) // batch_classes
    return int((counts >= 2).sum()) // batch_classes


def check_balanced_batches(files: ImageFiles, batch_classes: int, batch_per_class: int, small_classes: str) -> None:
    """Raises ValueError if `class_balanced_dataset` cannot build P x K batches from `files`."""
    check_balanced_counts(np.bincount(files.labels, minlength=files.num_classes), files.class_names,
                           batch_classes, batch_per_class, small_classes)


def check_balanced_counts(counts: np.ndarray, class_names: tuple[str, ...], batch_classes: int,
                           batch_per_class: int, small_classes: str) -> None:
    """`check_balanced_batches` from the images per class, counts [C], and the class names."""
    if small_classes not in SMALL_CLASSES:
        raise ValueError(f"small_classes must be one of {SMALL_CLASSES}, got {small_classes!r}")
    num_classes = len(counts)
    if num_classes < 2:
        raise ValueError(f"class-balanced batches need at least 2 classes, got {num_classes}")
    if small_classes == "cycle":
        num_eligible = int((counts >= 2).sum())
        if num_eligible < batch_classes:
            raise ValueError(
                f"only {num_eligible} classes have at least 2 images but batch_classes={batch_classes}"
            )
        skipped, cycled = int((counts < 2).sum()), int(((counts >= 2) & (counts < batch_per_class)).sum())
        if skipped or cycled:
            _logger.info("class-balanced sampling: %d single-image classes never sampled, %d classes with "
                         "fewer than %d images cycled", skipped, cycled, batch_per_class)
        return
    if num_classes < batch_classes:
        raise ValueError(f"only {num_classes} classes but batch_classes={batch_classes}")
    if (counts < batch_per_class).any():
        small = int(np.argmax(counts < batch_per_class))
        raise ValueError(
            f"class {class_names[small]!r} has {counts[small]} "
            f"image{'' if counts[small] == 1 else 's'} but batch_per_class={batch_per_class}"
        )
