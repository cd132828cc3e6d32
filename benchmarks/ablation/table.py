"""Table and curves of the with/without comparisons run by `benchmarks/ablation/run.sh`.

Reads `benchmarks/few_shot.py` results.json files (one fold and seed each), and writes to
--out_dir table.md (every row's held-out accuracy per fold, its mean, and its paired change
against its base row on the same fold and seed) and curves.png (20-way 1-shot against the step).
With --recall, reads `benchmarks/paper_table.py` results.json files instead and pairs rows seed by
seed on Recall@1 (rows named as paper_table names them; `RECALL_BASES` pairs them).

  python benchmarks/ablation/table.py --out_dir=benchmarks/results/ablation benchmarks/results/ablation/*/results.json
  python benchmarks/ablation/table.py --recall --out_dir=benchmarks/results/hdml benchmarks/results/hdml*/results.json
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from rows import BASES  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Defined when run as a script only: benchmarks/few_shot_merge.py imports this module's tables
    # beside few_shot.py, which defines its own --out_dir.
    flags.DEFINE_string("out_dir", "benchmarks/results/ablation", "Where table.md and curves.png go.")
    flags.DEFINE_bool("recall", False, "Inputs are paper_table.py results (Recall@1 per seed), not few_shot.py's.")

_LIBRARY_BASE = {"npair": "npair", "triplet": "triplet_semihard", "pddm": "pddm_quadruplet"}
#: paper_table row -> the row it is compared with, seed by seed (HDML: its twin without synthetic
#: negatives when it was run, else the library's loss of its base).
RECALL_BASES = {
    **{f"hdml_{base}{variant}": (f"hdml_{base}_without", _LIBRARY_BASE[base]) for base in ("npair", "triplet", "pddm")
       for variant in ("", "_alpha90", "_anchor_pair")},
    "hdml_npair_without": "npair", "hdml_triplet_without": "triplet_semihard",
    "hdml_pddm_without": "pddm_quadruplet",
    "dc_margin_k2": "dc_margin_k1", "dc_margin_k4": "dc_margin_k1",
    "dc_pddm_k2": "dc_pddm_k1", "dc_pddm_k4": "dc_pddm_k1",
    "pddm_triplet": "pddm_quadruplet", "euclidean_quadruplet": "pddm_quadruplet",
    "pddm_ranking": "pddm_quadruplet",
}

KEYS = (("oneshot_20way", "20-way 1-shot"), ("oneshot_5way", "5-way 1-shot"), ("fiveshot_20way", "20-way 5-shot"))
#: Panels of the curve plot: title -> rows.
PANELS = {
    "HDML (twin without synthetics, calibrated alpha, alpha = 90)": (
        "hdml_npair_base", "hdml_npair", "hdml_npair_a90", "hdml_npair_pairgen", "hdml_triplet_base", "hdml_triplet",
        "hdml_triplet_a90", "hdml_pddm_base", "hdml_pddm", "hdml_pddm_a90"),
    "Divide-and-Conquer (K learners)": ("dc_margin_k1", "dc_margin_k2", "dc_margin_k4", "dc_pddm_k1", "dc_pddm_k2",
                                        "dc_pddm_k4"),
    "PDDM's choices": ("pddm", "pddm_triplet", "euclidean_quadruplet", "pddm_raw_inputs"),
}


def load(paths: list[str]) -> dict[str, dict[int, dict[str, Any]]]:
    """Row -> fold -> figures, merged over the results files."""
    merged: dict[str, dict[int, dict[str, Any]]] = {}
    for path in paths:
        for row, per_fold in json.loads(pathlib.Path(path).read_text())["results"].items():
            for fold, figures in per_fold.items():
                merged.setdefault(row, {})[int(fold)] = figures
    return merged


def load_recall(paths: list[str]) -> dict[str, dict[int, dict[str, Any]]]:
    """Row -> seed -> figures, merged over paper_table.py results files."""
    merged: dict[str, dict[int, dict[str, Any]]] = {}
    for path in paths:
        payload = json.loads(pathlib.Path(path).read_text())
        seeds = [int(s) for s in payload["config"]["seeds"]]
        for row, runs in payload["runs"].items():
            for seed, figures in zip(seeds, runs):
                merged.setdefault(row, {})[seed] = figures
    return merged


#: few_shot.py's retrieval figures of the held-out images: a second table when every row has them.
RETRIEVAL_KEYS = (("recall@1", "R@1"), ("map@r", "MAP@R"), ("pddm_ranking_recall@1", "PDDM ranking R@1"),
                  ("euclidean_overlap", "overlap, distance"), ("score_overlap", "overlap, PDDM score"))


def table(results: dict[str, dict[int, dict[str, Any]]], recall: bool = False, retrieval: bool = False) -> str:
    """One line per row: its first figure per fold (or seed), every figure's mean, and the paired change
    of the first against its base row. `recall`: paper_table.py results; `retrieval`: few_shot.py's
    retrieval figures instead of its episodes (a figure a row lacks is shown as a dash)."""
    folds = sorted({f for per_fold in results.values() for f in per_fold})
    keys = (("recall@1", "recall@1"), ("recall@4", "recall@4"), ("nmi", "nmi")) if recall else (
        RETRIEVAL_KEYS if retrieval else KEYS)
    first, bases, unit = keys[0][0], RECALL_BASES if recall else BASES, "seed" if recall else "fold"
    head = ["row", *[f"{unit} {f}" for f in folds], *[name for _, name in keys], "base",
            f"change {'R@1' if recall or retrieval else '20w1s'} (per {unit})", f"{unit}s better"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, per_fold in results.items():
        cells = [row, *[f"{per_fold[f][first]:.3f}" if f in per_fold else "" for f in folds]]
        cells += [f"{np.mean([per_fold[f][key] for f in per_fold]):.3f}"
                  if all(key in per_fold[f] for f in per_fold) else "—" for key, _ in keys]
        candidates = bases.get(row, ())
        base = next((b for b in ((candidates,) if isinstance(candidates, str) else candidates) if b in results), None)
        if base is not None:
            shared = [f for f in per_fold if f in results[base]]
            change = np.array([per_fold[f][first] - results[base][f][first] for f in shared])
            cells += [base, f"{100 * change.mean():+.1f} ({', '.join(f'{100 * c:+.1f}' for c in change)})",
                      f"{int((change > 0).sum())} of {len(change)}"]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[int, dict[str, Any]]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {title: [r for r in rows if r in results] for title, rows in PANELS.items()}
    panels = {title: rows for title, rows in panels.items() if len(rows) > 1}
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, (title, rows) in zip(axes[0], panels.items()):
        for row in rows:
            curves = [figures["curve"] for figures in results[row].values()]
            length = min(len(c) for c in curves)
            steps = results[row][next(iter(results[row]))]["steps"]
            x = np.arange(1, length + 1) * steps / length
            axis.plot(x, np.mean([[p[1] for p in c[:length]] for c in curves], axis=0), marker="o", markersize=3,
                      label=row, linestyle="--" if row in BASES.values() else "-")
        axis.set(title=title, xlabel="training step", ylabel="held-out 20-way 1-shot (mean over folds)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    out = pathlib.Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if FLAGS.recall:
        text = table(load_recall(argv[1:]), recall=True)
        (out / "paired_table.md").write_text(text)
        print(text)
        return
    results = load(argv[1:])
    text = table(results)
    if all("recall@1" in figures for per_fold in results.values() for figures in per_fold.values()):
        text += "\nRetrieval among the held-out images (few_shot.py's second table), paired the same way:\n\n"
        text += table(results, retrieval=True)
    (out / "table.md").write_text(text)
    print(text)
    plot(results, out / "curves.png")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
