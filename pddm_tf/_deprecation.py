"""The warning of a spelling that a release renamed, kept working for one more release.

Every old spelling warns through `warn_deprecated`, with a `PDDMDeprecationWarning`: a
`DeprecationWarning` (so `pytest.deprecated_call`, `-W error::DeprecationWarning` and users' filters
treat it as one) of the library's own class, so the test suite can turn exactly these into errors
(pyproject.toml's pytest `filterwarnings`) without touching TensorFlow's, Keras' or NumPy's.
"""

from __future__ import annotations

import warnings


class PDDMDeprecationWarning(DeprecationWarning):
    """A pddm_tf spelling that still works for one release; the message names its replacement."""


def warn_deprecated(message: str, stacklevel: int = 2) -> None:
    """Warns `message` as a `PDDMDeprecationWarning`, attributed `stacklevel` frames up from the
    caller of this function (2: the caller's caller, the user's line that used the old spelling)."""
    warnings.warn(message, PDDMDeprecationWarning, stacklevel=stacklevel + 1)
