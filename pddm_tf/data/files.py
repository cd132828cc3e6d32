"""`ImageFiles` (a labelled list of image files, never the pixels), `DatasetSplit`, rotated copies."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFiles:
    """A labelled list of image files (never the pixels).

    Attributes:
      paths: [n] str, one image file per row.
      labels: [n] int32, contiguous class ids in 0..num_classes-1.
      class_names: num_classes names; `class_names[label]` names a row's class.
      rotations: [n] int32 in {0, 1, 2, 3}, the number of 90-degree counter-clockwise
        rotations applied when the file is decoded (rotated copies act as new classes).

    The arrays are normalised to str / int32 read-only copies. Equality is identity
    (`eq=False`): element-wise array comparison has no single truth value.
    """

    paths: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    rotations: np.ndarray

    def __post_init__(self) -> None:
        paths = np.array(self.paths, dtype=str)
        labels = np.array(self.labels)
        rotations = np.array(self.rotations)
        class_names = tuple(str(name) for name in self.class_names)
        for name, array in (("paths", paths), ("labels", labels), ("rotations", rotations)):
            if array.ndim != 1:
                raise ValueError(f"ImageFiles.{name} must be 1-D, got shape {array.shape}")
            if len(array) != len(paths):
                raise ValueError(
                    f"ImageFiles fields differ in length: {len(paths)} paths, {len(array)} {name}"
                )
        for name, array in (("labels", labels), ("rotations", rotations)):
            if array.size and not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"ImageFiles.{name} must be integers, got dtype {array.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(
                f"ImageFiles.labels must lie in [0, {len(class_names)}), "
                f"got [{labels.min()}, {labels.max()}]"
            )
        if rotations.size and (rotations.min() < 0 or rotations.max() > 3):
            raise ValueError("ImageFiles.rotations must lie in {0, 1, 2, 3}")
        normalised = {
            "paths": paths,
            "labels": labels.astype(np.int32),
            "rotations": rotations.astype(np.int32),
        }
        for name, array in normalised.items():
            array.setflags(write=False)  # The dataclass is frozen; so are its arrays.
            object.__setattr__(self, name, array)
        object.__setattr__(self, "class_names", class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes, `len(class_names)`."""
        return len(self.class_names)

    def __len__(self) -> int:
        """Number of images n."""
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class DatasetSplit:
    """Train and test images over disjoint classes.

    Attributes:
      train: the training images.
      test: the test images, or None when `test_fraction == 0`.
      channels: channels to decode the images with (1 for Omniglot, 3 for folders by default).
    """

    train: ImageFiles
    test: ImageFiles | None
    channels: int


def with_rotations(files: ImageFiles) -> ImageFiles:
    """Each class c becomes classes 4c+k, its copies rotated by k * 90 degrees (k = 0..3),
    named "<class>/rot<90k>": the usual way to make more training classes from characters.

    Expects unrotated files; rows stay grouped by class.
    """
    if files.rotations.any():
        raise ValueError("with_rotations expects unrotated files; these are rotated already")
    k = np.repeat(np.arange(4, dtype=np.int32), len(files))
    labels = np.tile(files.labels, 4) * 4 + k
    order = np.argsort(labels, kind="stable")
    return ImageFiles(
        paths=np.tile(files.paths, 4)[order],
        labels=labels[order],
        class_names=tuple(f"{name}/rot{90 * r}" for name in files.class_names for r in range(4)),
        rotations=k[order],
    )
