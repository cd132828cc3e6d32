"""Runs the `>>>` examples in pddm_tf's docstrings as doctests, so a stale example fails the tests.

Every module whose source holds an example is found by reading the files: a new example runs
without being listed here.
"""

import doctest
import importlib
import pathlib

import pytest

import pddm_tf

_PACKAGE = pathlib.Path(pddm_tf.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        if ">>> " in path.read_text(encoding="utf-8"):
            parts = path.relative_to(_PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


_MODULES = _modules_with_examples()


def test_the_central_apis_have_examples():
    # Guards the discovery: these modules' public APIs carry runnable examples.
    for name in ("pddm_tf.distances", "pddm_tf.layers.pddm", "pddm_tf.losses.pddm", "pddm_tf.miners.mining",
                 "pddm_tf.evaluation.retrieval", "pddm_tf.evaluation.few_shot"):
        assert name in _MODULES


@pytest.mark.parametrize("name", _MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no doctest examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see above)"
