"""benchmarks/paper_table.py: the overlap measure it reports, and its --quick run as CI runs it."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pddm_tf.evaluation import distribution_overlap

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_overlap_known_values():
    overlap = distribution_overlap
    rng = np.random.default_rng(0)
    a = rng.normal(size=20000)
    assert overlap(a, a) == pytest.approx(1.0)
    assert overlap(a, a + 100.0) == 0.0
    # Two unit normals one standard deviation apart overlap by 2 * Phi(-1/2) = 0.617.
    assert overlap(a, rng.normal(1.0, 1.0, size=20000), bins=60) == pytest.approx(0.617, abs=0.03)


@pytest.mark.slow
def test_quick_run_writes_table_and_plots(tmp_path):
    methods = "pddm_quadruplet,euclidean_quadruplet,multi_similarity"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "paper_table.py"), "--quick", f"--methods={methods}",
         f"--out_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("table.md", "results.json", "recall_curve.png", "similarity_hist.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert set(runs) == {*methods.split(","), "pddm_ranking"}
    table = (tmp_path / "table.md").read_text()
    for method, seeds in runs.items():
        # The table's mean is the mean of the per-run figures in results.json.
        expected = f"| {method} | {np.mean([r['recall@1'] for r in seeds]):.3f} ±"
        assert expected in table, method
