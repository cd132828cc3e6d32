"""The losses' values and gradients at their default reducers and distances equal those recorded
from the pre-contract code (commit 44f8a2c) on fixed inputs (issue 30 item 8).

`tests/data/loss_values_44f8a2c.npz` was written by `tests/data/record_loss_values.py` run on commit
44f8a2c, before the loss contract (distances, reducers, one `from_indices`) replaced the losses'
hand-written averaging. It is the one kind of recorded result this suite holds: it pins behaviour
across a refactoring, while every other test checks values computed independently.
"""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"
_spec = importlib.util.spec_from_file_location("record_loss_values", DATA / "record_loss_values.py")
recorder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recorder)
RECORDED = dict(np.load(DATA / "loss_values_44f8a2c.npz"))


@pytest.mark.parametrize("name", sorted(recorder.cases()))
def test_value_and_gradient_equal_pre_contract_recording(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the old spellings are among the cases
        value, gradients = recorder.evaluate(recorder.cases()[name], recorder.fixed_inputs())
    np.testing.assert_allclose(value, RECORDED[f"{name}/value"], rtol=1e-5, atol=1e-6)
    for number, gradient in enumerate(gradients):
        np.testing.assert_allclose(gradient, RECORDED[f"{name}/gradient{number}"], rtol=1e-4, atol=1e-6,
                                   err_msg=f"gradient {number}")


def test_every_recorded_case_is_still_run():
    recorded = {key.split("/")[0] for key in RECORDED}
    assert recorded == set(recorder.cases())
