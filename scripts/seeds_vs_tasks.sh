#!/usr/bin/env bash
# Seeds vs tasks at a fixed budget (docs/search_study.md, issue 17): the budgeted search
# from the reference's random start (softmax(randn) GSVs), with the init seed and the
# data seed varied separately, on two tasks; then the agreement tables (against chance
# and against the initial read-outs):
#   OUT=outputs/seeds_vs_tasks scripts/seeds_vs_tasks.sh
# Sized for 2 cores: SmolLM2-135M cut to 8 layers, LoRA-MoE on layers 6-7 (14 modules),
# a params budget of 150,000 (about 7 rank rows per module: the random start's read-out
# is far above it, so the budget binds), 100 steps; the rest as experiment=powered_search.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs/seeds_vs_tasks}
COMMON=(experiment=powered_search backbone.loader.num_layers=8 "layers=[6,7]"
  budget.value=150000 trainer.max_steps=100 search.start=random search.heatmap=false
  trainer.enable_progress_bar=false)
# (data seed, init seed): the init seed alone varies in the first three, the data seed
# alone in the first and the last two
PAIRS=${PAIRS:-"1:1 1:2 1:3 2:1 3:1"}
for task in ${TASKS:-vader_intensity vader_polarity}; do
  for pair in $PAIRS; do
    data=${pair%%:*}; init=${pair##*:}
    dir="$OUT/random_start/$task/d${data}_i${init}"
    [ -f "$dir/allocation.json" ] && continue
    "$PY" search.py "${COMMON[@]}" "$@" "task=$task" "seed=$data" "search.init_seed=$init" \
      "hydra.run.dir=$dir"
  done
done
"$PY" scripts/search_study.py "$OUT" | tee "$OUT/tables.md"
