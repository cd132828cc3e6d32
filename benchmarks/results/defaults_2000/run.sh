#!/bin/bash
# The defaults at twice their steps (2,000) on the 4 folds: the PDDM defaults and the margin loss (the best
# row of methods_4fold.md at 1,000 steps), one single-threaded benchmarks/few_shot.py process per fold.
# `bash run.sh 0,1,2,3`; a fold whose results.json exists is skipped.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../../.."
export CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=2 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
for f in ${1//,/ }; do
  out="$here/runs/f${f}"
  [ -f "$out/results.json" ] && continue
  python benchmarks/few_shot.py --defaults=plain --folds="$f" --steps=2000 --rows=pddm_defaults,margin \
    --variants='{"margin": {"base": "pddm_defaults", "method": "margin"}}' --out_dir="$out"
done
