"""Table and curves of the with/without comparisons run by `benchmarks/ablation/run.sh`.

Reads `benchmarks/few_shot.py` results.json files (one fold and seed each), and writes to
--out_dir table.md (every row's held-out accuracy per fold, its mean, and its paired change
against its base row on the same fold and seed) and curves.png (20-way 1-shot against the step).

  python benchmarks/ablation/table.py --out_dir=benchmarks/results/ablation benchmarks/results/ablation/*/results.json
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
flags.DEFINE_string("out_dir", "benchmarks/results/ablation", "Where table.md and curves.png go.")

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


def table(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    folds = sorted({f for per_fold in results.values() for f in per_fold})
    head = ["row", *[f"fold {f}" for f in folds], *[name for _, name in KEYS], "base",
            "change 20w1s (per fold)", "folds better"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, per_fold in results.items():
        cells = [row, *[f"{per_fold[f]['oneshot_20way']:.3f}" if f in per_fold else "" for f in folds]]
        cells += [f"{np.mean([per_fold[f][key] for f in per_fold]):.3f}" for key, _ in KEYS]
        base = BASES.get(row)
        if base in results:
            shared = [f for f in per_fold if f in results[base]]
            change = np.array([per_fold[f]["oneshot_20way"] - results[base][f]["oneshot_20way"] for f in shared])
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
    panels = {title: rows for title, rows in panels.items() if rows}
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
    results = load(argv[1:])
    out = pathlib.Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = table(results)
    (out / "table.md").write_text(text)
    print(text)
    plot(results, out / "curves.png")


if __name__ == "__main__":
    app.run(main)
