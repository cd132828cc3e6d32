#!/bin/bash
# The few-shot with/without comparisons of BENCHMARKS.md sections 3, 4 and 2 (issues 14 item 7, 13 item 5):
# seed s on fold s (s = 0, 1, 2), 500 steps per row, then the table. About 2 hours on 2 cores;
# GROUPS_TO_RUN=pddm_claims runs one group.
#   bash benchmarks/ablation/run.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-benchmarks/results/ablation}
for group in ${GROUPS_TO_RUN:-methods hdml_twins pddm_claims}; do
  rows=$(python -c "import sys; sys.path.insert(0, 'benchmarks/ablation'); import rows; print(','.join(rows.GROUPS['$group']))")
  for s in 0 1 2; do
    python benchmarks/few_shot.py --out_dir="$out/$group$s" --steps=500 --folds=$s --rows="$rows" \
      --variants="$(python benchmarks/ablation/rows.py $s $group)" --num_episodes=400
  done
done
python benchmarks/ablation/table.py --out_dir="$out" "$out"/*/results.json
