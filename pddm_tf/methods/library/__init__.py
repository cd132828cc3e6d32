"""The built-in training methods, one module each: a `MethodSpec` (name, builder, options, flags).

Every module here whose name does not start with `_` is loaded by `pddm_tf.methods.catalog`, which
is how a method added as one new file is found; `_shared.py` holds what several methods share.
No module here imports TensorFlow at import time (see `pddm_tf.methods.spec`).
"""
