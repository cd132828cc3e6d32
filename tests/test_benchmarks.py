"""benchmarks/paper_table.py and few_shot.py: the overlap measure, and their --quick runs as CI runs them;
BENCHMARKS.md: a headline page whose links, section references and figures hold."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from doc_references import find_references, numbered_sections

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


@pytest.mark.slow
def test_few_shot_quick_run_trains_every_kind_of_row(tmp_path):
    """Pixels, the benchmark's prototypical network and `pddm_tf.training.build_model`'s rows (plus a
    variant, and Divide-and-Conquer, whose schedule comes from its method's defaults): every figure in
    [0, 1], and the table's mean is results.json's."""
    rows = "pixel,protonet,pddm_defaults,d_ms,dc_margin"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "few_shot.py"), "--quick", f"--rows={rows}",
         '--variants={"d_ms": {"base": "pddm_defaults", "method": "multi_similarity"}}', f"--out_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == set(rows.split(","))
    table = (tmp_path / "table.md").read_text()
    for row, folds in results.items():
        figures = folds["0"]
        assert all(0.0 <= figures[key] <= 1.0 for key in ("oneshot_20way", "oneshot_5way", "fiveshot_20way"))
        assert f"| {row} | {figures['oneshot_20way']:.3f} |" in table
    assert results["pixel"]["0"]["steps"] == 0 and results["d_ms"]["0"]["steps"] == 20
    # The retrieval table: R@1 of every row, PDDM ranking and the PDDM score's overlap only where there is a PDDM unit.
    for row, folds in results.items():
        figures = folds["0"]
        assert 0.0 <= figures["recall@1"] <= figures["recall@8"] <= 1.0
        assert f"| {row} | {figures['recall@1']:.3f} | {figures['recall@8']:.3f} |" in table
        assert ("score_overlap" in figures) == ("pddm_ranking_recall@1" in figures) == (row == "pddm_defaults")


def test_ablation_table_pairs_each_row_with_its_base_on_the_same_fold(tmp_path):
    """benchmarks/ablation/table.py: a row's change is its accuracy minus its base's, fold by fold."""
    accuracy = {"dc_margin_k1": {0: 0.50, 1: 0.70}, "dc_margin_k2": {0: 0.60, 1: 0.65}}  # change +10.0 and -5.0 points
    paths = []
    for fold in (0, 1):
        results = {row: {str(fold): {"oneshot_20way": acc[fold], "oneshot_5way": acc[fold] + 0.2,
                                     "fiveshot_20way": acc[fold] + 0.1, "steps": 20,
                                     "curve": [[1.0, acc[fold] - 0.1], [2.0, acc[fold]]]}}
                   for row, acc in accuracy.items()}
        path = tmp_path / f"fold{fold}.json"
        path.write_text(json.dumps({"results": results}))
        paths.append(str(path))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ablation" / "table.py"), f"--out_dir={out}",
                             *paths], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "table.md").read_text()
    # Means over folds (0.55, 0.675) and the paired change (mean +2.5: +10.0 on fold 0, -5.0 on fold 1).
    assert "| dc_margin_k1 | 0.500 | 0.700 | 0.600 | 0.800 | 0.700 |  |  |  |" in table
    assert ("| dc_margin_k2 | 0.600 | 0.650 | 0.625 | 0.825 | 0.725 | dc_margin_k1 | +2.5 (+10.0, -5.0) | 1 of 2 |"
            in table)
    assert (out / "curves.png").stat().st_size > 0
    assert "Retrieval among the held-out images" not in table  # these results have no retrieval figures


def test_ablation_table_pairs_the_retrieval_figures_when_every_row_has_them(tmp_path):
    """few_shot.py results with its retrieval figures: a second table pairs R@1 fold by fold; a figure
    only PDDM rows have (the re-ranked R@1) is a dash for the others."""
    recall = {"pddm_recipe": {0: 0.70, 3: 0.80}, "recipe": {0: 0.75, 3: 0.78}}  # change +5.0 and -2.0 points
    results = {row: {str(fold): {"oneshot_20way": 0.5, "oneshot_5way": 0.7, "fiveshot_20way": 0.6, "steps": 20,
                                 "curve": [[1.0, 0.5]], "recall@1": value, "map@r": value / 2,
                                 "euclidean_overlap": 0.3, **({"pddm_ranking_recall@1": 0.6, "score_overlap": 0.2}
                                                              if row == "pddm_recipe" else {})}
                     for fold, value in per_fold.items()} for row, per_fold in recall.items()}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": results}))
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ablation" / "table.py"),
                             f"--out_dir={tmp_path}", str(path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert "| pddm_recipe | 0.700 | 0.800 | 0.750 | 0.375 | 0.600 | 0.300 | 0.200 |  |  |  |" in table
    assert ("| recipe | 0.750 | 0.780 | 0.765 | 0.383 | — | 0.300 | — | pddm_recipe | +1.5 (+5.0, -2.0) | 1 of 2 |"
            in table)


def test_ablation_table_pairs_recall_seed_by_seed(tmp_path):
    """--recall: paper_table.py results, paired seed by seed (seeds 3 and 5 as the file lists them)."""
    runs = {"dc_pddm_k1": [{"recall@1": 0.60, "recall@4": 0.8, "nmi": 0.7}, {"recall@1": 0.50, "recall@4": 0.7,
                                                                            "nmi": 0.6}],
            "dc_pddm_k4": [{"recall@1": 0.55, "recall@4": 0.8, "nmi": 0.7}, {"recall@1": 0.52, "recall@4": 0.7,
                                                                            "nmi": 0.6}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": {"seeds": ["3", "5"]}, "runs": runs}))
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ablation" / "table.py"), "--recall",
                             f"--out_dir={tmp_path}", str(path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "paired_table.md").read_text()
    assert "| row | seed 3 | seed 5 |" in table
    assert "| dc_pddm_k4 | 0.550 | 0.520 | 0.535 | 0.750 | 0.650 | dc_pddm_k1 | -1.5 (-5.0, +2.0) | 1 of 2 |" in table


# --- BENCHMARKS.md, the headline page, and benchmarks/results/*.md, the full record ---------------

_BENCHMARKS = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
_RESULTS = REPO / "benchmarks" / "results"


def _links(markdown: str) -> list[str]:
    """The targets of the page's Markdown links and images, without their #anchors."""
    return [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", markdown)
            if not re.match(r"[a-z]+:", target)]


def _figures(text: str) -> set[str]:
    """The decimal figures of the table rows of a text ("0.853", "29.0", "1.17"), as written."""
    rows = [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return set(re.findall(r"(?<![\d.])\d+\.\d+(?![\d.])", "\n".join(rows)))


def test_benchmarks_is_a_headline_page():
    assert len(_BENCHMARKS.splitlines()) < 300


def test_every_benchmarks_link_resolves_and_every_record_is_linked():
    linked = set()
    for target in _links(_BENCHMARKS):
        assert (REPO / target).exists(), f"BENCHMARKS.md links to {target}, which does not exist"
        linked.add((REPO / target).resolve())
    records = sorted(_RESULTS.glob("*.md"))
    assert len(records) >= 10
    for record in records:
        assert record.resolve() in linked, f"BENCHMARKS.md does not link {record.relative_to(REPO)}"
        for target in _links(record.read_text(encoding="utf-8")):
            assert (record.parent / target).exists(), f"{record.relative_to(REPO)} links to {target}, missing"


def test_every_benchmarks_section_reference_resolves():
    """Every reference to a numbered section of the benchmarks page, anywhere in the repository, names
    one of its sections; a title quoted after the page's name is a heading of the page or a record."""
    sections = numbered_sections(_BENCHMARKS)
    assert sorted(sections) == list(range(1, 12))
    headings = "\n".join(line for path in [REPO / "BENCHMARKS.md", *_RESULTS.glob("*.md")]
                         for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
    references = find_references("BENCHMARKS.md")
    assert sum(bool(r.sections) for r in references) >= 10  # guards the discovery
    failures = [f"{r.path}:{r.line}: {r.text!r}" for r in references
                if any(s not in sections for s in r.sections) or (r.title and r.title not in headings)]
    assert not failures, "\n".join(failures)


def test_every_table_keeps_its_command():
    """Each section of BENCHMARKS.md, and each record, that shows a table also shows the command that
    produced it (a bash block or an inline `python ...` / `pddm-tf ...` command)."""
    texts = {f"BENCHMARKS.md section {n}": text for n, text in numbered_sections(_BENCHMARKS).items()}
    texts.update({str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in sorted(_RESULTS.glob("*.md"))})
    for name, text in texts.items():
        if re.search(r"(?m)^\|.*\|$", text):
            assert re.search(r"```bash\n|`(?:python|pddm-tf) [^`]+`", text), f"{name} has a table but no command"


def test_headline_figures_are_those_of_the_full_record():
    """Every figure of a headline table appears in the tables of the record its section links: the
    headline copies the record, it does not re-measure or round."""
    failures = []
    for number, text in numbered_sections(_BENCHMARKS).items():
        records = [REPO / target for target in _links(text) if target.startswith("benchmarks/results/")]
        assert records, f"section {number} links no record"
        recorded = set().union(*(_figures(path.read_text(encoding="utf-8")) for path in records))
        failures += [f"section {number}: {figure}" for figure in sorted(_figures(text) - recorded)]
    assert not failures, "figures not in the full record:\n" + "\n".join(failures)
