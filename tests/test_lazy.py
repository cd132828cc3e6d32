"""`pddm_tf._lazy.lazy_attributes`: names imported on first use, cached, and refused when unknown."""

import sys
import types

import pytest

from pddm_tf._lazy import lazy_attributes


@pytest.fixture
def package(monkeypatch):
    module = types.ModuleType("fake_package")
    monkeypatch.setitem(sys.modules, "fake_package", module)
    # A module the test itself has not imported yet, so its import is observable.
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    calls = []
    module.__getattr__, module.__dir__ = lazy_attributes(
        "fake_package", {"rgb_to_hsv": "colorsys", "dumps": "json"}, before_import=lambda: calls.append(1))
    return module, calls


def test_a_name_is_imported_on_first_use_then_stored(package):
    module, calls = package
    assert "colorsys" not in sys.modules
    rgb_to_hsv = module.rgb_to_hsv
    assert "colorsys" in sys.modules and rgb_to_hsv is sys.modules["colorsys"].rgb_to_hsv
    assert rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)  # red: hue 0, full saturation and value
    assert vars(module)["rgb_to_hsv"] is rgb_to_hsv and calls == [1]
    assert module.rgb_to_hsv is rgb_to_hsv and calls == [1]  # stored: no second import, no second call


def test_unknown_names_and_dir(package):
    module, calls = package
    with pytest.raises(AttributeError, match="module 'fake_package' has no attribute 'loads'"):
        _ = module.loads
    assert calls == []
    assert {"rgb_to_hsv", "dumps"} <= set(dir(module))
