#!/bin/bash
# The omniglot recipe (3,000 steps of 32 x 4 batches) with the best losses of methods_4fold.md in place of
# multi-similarity, one single-threaded benchmarks/few_shot.py process per fold and row:
# `bash run.sh FOLDS ROWS` (e.g. `bash run.sh 0,3 recipe_margin`); a run whose results.json exists is skipped.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../../.."
export CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=2 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
variants='{"recipe_margin": {"base": "recipe", "method": "margin"}, "recipe_tbh": {"base": "recipe", "method": "triplet_batchhard"}, "recipe_pddm": {"base": "recipe", "method": "pddm_quadruplet"}, "recipe_tuplet": {"base": "recipe", "method": "tuplet_margin"}, "recipe_fastap": {"base": "recipe", "method": "fastap"}}'
for row in ${2//,/ }; do
  for f in ${1//,/ }; do
    out="$here/runs/${row}_f${f}"
    [ -f "$out/results.json" ] && continue
    python benchmarks/few_shot.py --folds="$f" --steps=3000 --rows="$row" --variants="$variants" --out_dir="$out"
  done
done
