"""Validation of the tensors a client sends to an exported signature, in the graph, before any kernel sees them.

A SavedModel signature's input spec is not enforced when the graph runs: TF Serving (and a
signature loaded with `tf.saved_model.load`) feeds whatever tensor the request holds. A rank-3
batch reaching a convolution fails a CHECK inside TensorFlow and aborts the whole process, and a
36 x 36 batch against a 32 x 32 export is embedded silently. So every signature declares its
inputs with an unknown shape (nothing static for Grappler to fold the checks away with) and
checks rank, static dimensions and values here; a bad request gets an InvalidArgumentError that
names the input, and the server goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from pddm_tf.data import image_header


def spec(dtype: tf.DType, name: str) -> tf.TensorSpec:
    """The input spec of a checked input: any shape (checked by `checked`), `dtype` (checked by TensorFlow)."""
    return tf.TensorSpec(None, dtype, name=name)


def checked(tensor: tf.Tensor, name: str, shape: Sequence[int | None], description: str = "") -> tf.Tensor:
    """`tensor` after checking it has `shape` (None = any size), reshaped so its static shape is `shape`.

    Raises (when run):
      tf.errors.InvalidArgumentError: "<name> must have shape [n, 32, 32, 1] (<description>), got [4 32 32]".
    """
    rank = len(shape)
    actual = tf.shape(tensor)
    # The actual shape padded (or cut) to `rank` entries: comparable whatever the request's rank.
    padded = tf.concat([actual, tf.zeros([rank], tf.int32)], axis=0)[:rank]
    fixed = [i for i, size in enumerate(shape) if size is not None]
    ok = tf.equal(tf.size(actual), rank)
    if fixed:
        ok &= tf.reduce_all(tf.equal(tf.gather(padded, fixed), [shape[i] for i in fixed]))
    wanted = "[" + ", ".join("n" if i == 0 and size is None else "any" if size is None else str(size)
                             for i, size in enumerate(shape)) + "]"
    about = f" ({description})" if description else ""
    check = tf.debugging.Assert(ok, [tf.strings.format(f"{name} must have shape {wanted}{about}, got {{}}",
                                                       actual, summarize=-1)])
    with tf.control_dependencies([check]):
        return tf.reshape(tensor, [-1 if size is None else size for size in shape])


def checked_values(tensor: tf.Tensor, name: str, low: float | None = None, high: float | None = None) -> tf.Tensor:
    """A float [n, ...] batch after checking every value is finite (and within [low, high] when given).

    Raises (when run):
      tf.errors.InvalidArgumentError: naming the input and the first row (counting from 0) at fault.
    """
    rows = tf.reshape(tensor, [tf.shape(tensor)[0], -1])
    bad = tf.logical_not(tf.math.is_finite(rows))
    what = "NaN or inf"
    if low is not None and high is not None:
        bad |= (rows < low) | (rows > high)
        what = f"NaN, inf or a value outside [{low:g}, {high:g}]"
    bad_rows = tf.reduce_any(bad, axis=1)
    check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad_rows)), [tf.strings.format(
        f"{name} holds {what} in row {{}} of the batch (counting from 0)", image_header.first_true(bad_rows))])
    with tf.control_dependencies([check]):
        return tf.identity(tensor)
