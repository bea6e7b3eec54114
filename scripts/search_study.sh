#!/usr/bin/env bash
# The search study of docs/search_study.md: SmolLM2 cut to 8 layers, search on layers 6-7,
# two tasks x three seeds for each variant, then the tables.  OUT=<dir> scripts/search_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs/search_study}
COMMON="backbone.loader.num_layers=8 layers=[6,7] trainer.max_steps=100 trainer.enable_progress_bar=false search.heatmap=false"
declare -A VARIANTS=(
  [default]=""
  [constant_1e-2]="search.outer.schedule=constant search.outer.lr=1e-2"
  [reference]="search.expert_signal=logits search.expert_credit=reference search.rank_credit=reference search.outer.lr=3e-3 search.outer.schedule=constant"
)
for variant in "${!VARIANTS[@]}"; do
  for task in chatterbot_topic bigbench_multiemo; do
    for seed in 42 7 1; do
      # shellcheck disable=SC2086
      "$PY" search.py $COMMON ${VARIANTS[$variant]} task=$task seed=$seed \
        "hydra.run.dir=$OUT/$variant/$task/$seed"
    done
  done
done
"$PY" scripts/search_study.py "$OUT" --budget-rank 300
