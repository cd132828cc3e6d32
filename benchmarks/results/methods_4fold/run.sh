#!/bin/bash
# One worker of the 4-fold run of benchmarks/results/methods_4fold.md: for each group of rows (groups.json),
# for each fold given, one benchmarks/few_shot.py process at 1,000 steps, single-threaded. Two workers ran
# side by side: `bash run.sh 0,2 & bash run.sh 1,3`. A group and fold whose results.json exists is skipped.
# A second argument limits the groups (indices into groups.json, e.g. 6,7,8,9); groups 0 and 3 shared
# their fold 0 and 1 processes (runs/g0_f0, runs/g0_f1).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../../.."
export CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=2 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
variants=$(cat "$here/variants.json")
groups=$(python -c "import json; print(len(json.load(open('$here/groups.json'))))")
for g in $(echo "${2:-$(seq -s, 0 $((groups - 1)))}" | tr , " "); do
  rows=$(python -c "import json; print(','.join(json.load(open('$here/groups.json'))[$g]))")
  for f in ${1//,/ }; do
    out="$here/runs/g${g}_f${f}"
    [ -f "$out/results.json" ] && continue
    python benchmarks/few_shot.py --defaults=plain --folds="$f" --steps=1000 --rows="$rows" --variants="$variants" --out_dir="$out"
  done
done
