"""What a loss's `compute_terms` receives: the checked batch, its reference set and its distances."""

from __future__ import annotations

import tensorflow as tf

from pddm_tf.distances import Distance
from pddm_tf.miners import Tuples
from pddm_tf.miners.mining import check_labels, pair_masks


def check_embeddings(embeddings: tf.Tensor, labels: tf.Tensor | None = None) -> tf.Tensor:
    """Validates a [m, d] float embedding batch (and its [m] labels); raises a clear error on NaN/inf.

    The NaN check is a `tf.debugging` assertion: it runs inside graphs too, and stops training with a
    message naming the problem instead of letting a NaN loss through.
    """
    embeddings = tf.convert_to_tensor(embeddings)
    if not embeddings.dtype.is_floating:
        raise TypeError(f"embeddings must be floating point, got dtype {embeddings.dtype.name}")
    if embeddings.shape.rank is not None and embeddings.shape.rank != 2:
        raise ValueError(f"embeddings must have shape [batch, dim], got shape {embeddings.shape}")
    if labels is not None:
        labels = check_labels(labels)
        if (embeddings.shape[0] is not None and labels.shape[0] is not None
                and embeddings.shape[0] != labels.shape[0]):
            raise ValueError(f"labels ({labels.shape[0]}) and embeddings ({embeddings.shape[0]}) "
                             "have different batch sizes")
    return tf.debugging.assert_all_finite(embeddings, "embeddings reaching the loss contain NaN or inf")


def labels_from_y_true(y_true: tf.Tensor) -> tf.Tensor:
    """Class ids [m] int32 from a Keras `y_true`.

    `keras.losses.Loss.__call__` has already cast y_true to the loss dtype (float); class ids are
    exact in float32 up to 2^24, so casting back is lossless. A non-integer value (0.4 and 0.6 would
    both truncate to class 0) is refused by an assertion that also runs inside graphs.
    """
    y_true = tf.convert_to_tensor(y_true)
    if y_true.dtype.is_floating:
        check = tf.debugging.assert_equal(
            y_true, tf.round(y_true),
            message="labels must be integer class ids; got a non-integer value (it would be truncated)")
        with tf.control_dependencies([check]):
            y_true = tf.cast(y_true, tf.int32)
    return check_labels(y_true)


class LossBatch:
    """A checked batch as a loss sees it, with its reference set and its matrix under the loss's distance.

    Attributes:
      labels: [m] int32. embeddings: [m, d], finite.
      ref_labels, ref_embeddings: [n] and [n, d]: the reference samples (positives and negatives
        are taken from them), the batch itself (n = m) when `has_ref` is False.
      has_ref: whether a separate reference set was given (a Python bool). Without it, a sample is
        not its own positive; with it, every same-label reference row is a positive.
      distance: the loss's `Distance`.
    """

    def __init__(self, labels: tf.Tensor, embeddings: tf.Tensor, distance: Distance,
                 ref_embeddings: tf.Tensor | None = None, ref_labels: tf.Tensor | None = None) -> None:
        self.labels, self.embeddings, self.distance = labels, embeddings, distance
        self.has_ref = ref_embeddings is not None
        self.ref_embeddings = embeddings if ref_embeddings is None else ref_embeddings
        self.ref_labels = labels if ref_labels is None else ref_labels
        self._matrix: tf.Tensor | None = None

    @classmethod
    def from_matrix(cls, labels: tf.Tensor, matrix: tf.Tensor, distance: Distance) -> LossBatch:
        """A batch known only by its labels [m] and its matrix [m, m] under `distance` (no embeddings):
        what the deprecated `from_indices(tuples, distances=...)` spellings give."""
        batch = cls(labels, None, distance)  # type: ignore[arg-type]
        batch._matrix = tf.convert_to_tensor(matrix)
        return batch

    @classmethod
    def checked(cls, labels: tf.Tensor, embeddings: tf.Tensor, distance: Distance,
                ref_embeddings: tf.Tensor | None = None, ref_labels: tf.Tensor | None = None) -> LossBatch:
        """A batch from raw inputs: labels int (or integral float), embeddings [m, d] float; the
        reference set likewise, both or neither. Raises a one-line error on bad input."""
        labels = labels_from_y_true(labels)
        embeddings = check_embeddings(embeddings, labels)
        if (ref_embeddings is None) != (ref_labels is None):
            raise ValueError("ref_embeddings and ref_labels go together: pass both or neither")
        if ref_embeddings is not None:
            ref_labels = labels_from_y_true(ref_labels)
            ref_embeddings = check_embeddings(ref_embeddings, ref_labels)
            if (embeddings.shape[1] is not None and ref_embeddings.shape[1] is not None
                    and embeddings.shape[1] != ref_embeddings.shape[1]):
                raise ValueError(f"ref_embeddings have dimension {ref_embeddings.shape[1]}, the embeddings "
                                 f"{embeddings.shape[1]}")
            ref_embeddings = tf.cast(ref_embeddings, embeddings.dtype)
        return cls(labels, embeddings, distance, ref_embeddings, ref_labels)

    @property
    def matrix(self) -> tf.Tensor:
        """distance.pairwise(embeddings, reference) [m, n], with gradient; computed once."""
        if self._matrix is None:
            # One argument without a reference set: distances written before `pairwise(x, y)` still work.
            self._matrix = (self.distance.pairwise(self.embeddings, self.ref_embeddings) if self.has_ref
                            else self.distance.pairwise(self.embeddings))
        return self._matrix

    def pair_masks(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(positive [m, n] bool, negative [m, n] bool): every pair of the batch and reference set."""
        return pair_masks(self.labels, self.ref_labels if self.has_ref else None)

    def tuple_masks(self, tuples: Tuples) -> tuple[tf.Tensor, tf.Tensor]:
        """The pairs tuples name, as masks (positive [m, n]: every (a1, p); negative [m, n]: every
        (a2, n)); a pair named by several rows is one pair. This is how a pair loss reads a
        miner's tuples, of either form."""
        shape = tf.shape(self.matrix) if self.embeddings is None else tf.stack(
            [tf.shape(self.embeddings)[0], tf.shape(self.ref_embeddings)[0]])
        a1, p, a2, n = tuples.pairs()

        def mask(rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
            return tf.scatter_nd(tf.stack([rows, columns], axis=1), tf.ones_like(rows), shape) > 0

        return mask(a1, p), mask(a2, n)

    def gather(self, rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
        """matrix[rows[r], columns[r]] for [t] indices -> [t]."""
        return tf.gather_nd(self.matrix, tf.stack([rows, columns], axis=1))

    def pair_values(self, rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
        """The distance of the pairs (rows[r], columns[r]) -> [t]: gathered from the matrix when it has
        been computed (mining needed it), else computed for the t pairs only (`paired`)."""
        return self.paired(rows, columns) if self._matrix is None else self.gather(rows, columns)

    def paired(self, rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
        """distance.paired of embeddings[rows] and reference[columns] -> [t]: only the t pairs are
        computed (the whole matrix is not)."""
        return self.distance.paired(tf.gather(self.embeddings, rows), tf.gather(self.ref_embeddings, columns))
