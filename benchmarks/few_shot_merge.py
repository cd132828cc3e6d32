"""Merges `benchmarks/few_shot.py` results.json files (rows and folds run as separate processes) into
one results.json, table.md and accuracy_vs_time.png, with `few_shot.py`'s own tables; --bases adds
the paired change of each row against its base row, fold by fold (`benchmarks/ablation/table.py`).

  python benchmarks/few_shot_merge.py --out_dir=benchmarks/results/losses_4fold \
      --bases='{"euclidean_quadruplet": "pddm_defaults"}' RUN_DIR/*/results.json
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parent / "ablation"))
import few_shot  # noqa: E402
import table as ablation_table  # noqa: E402

from pddm_tf import atomic  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("bases", None, "JSON: row -> the row it is compared with, fold by fold.")
flags.DEFINE_list("order", None, "These rows first, in this order; the others after, as first met in the files.")


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give the results.json files to merge")
    results = ablation_table.load(paths)
    order = [*(FLAGS.order or []), *(row for row in results if row not in (FLAGS.order or []))]
    results = {row: dict(sorted(results[row].items())) for row in order if row in results}
    commands = sorted({json.loads(pathlib.Path(p).read_text())["command"] for p in paths})
    out = pathlib.Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"merged_from": paths, "commands": commands, "results": results}
    atomic.write_text(out / "results.json", json.dumps(payload, indent=1, default=str))
    text = few_shot._table(results) + "\n" + few_shot._retrieval_table(results)
    if FLAGS.bases:
        ablation_table.BASES.clear()
        ablation_table.BASES.update(json.loads(FLAGS.bases))
        paired = {row: results[row] for row in results if row in ablation_table.BASES}
        paired.update({base: results[base] for base in ablation_table.BASES.values() if base in results})
        text += "\nPaired against each row's base, fold by fold:\n\n" + ablation_table.table(paired)
    atomic.write_text(out / "table.md", text)
    print(text)
    few_shot._plot(results, out / "accuracy_vs_time.png")


if __name__ == "__main__":
    app.run(main)
