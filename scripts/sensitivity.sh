#!/usr/bin/env bash
# Does where the parameters go matter for this task at this budget? Run this before a
# search on a new task or budget. It fine-tunes, at one budget and for every seed,
# uniform, random draws, and the deliberately poor placements (concentrated: the budget
# on one module kind; concentrated_low: on the lowest adapted layer), plus, given a
# searched allocation (SEARCHED=<allocation.json>), shuffled draws, inverted and the
# searched allocation itself, every one at exactly the same size; then prints paired
# intervals on held-out loss and accuracy and the verdict (python -m guilomo.sensitivity).
#
#   scripts/sensitivity.sh budget=params budget.value=400000 task=vader_intensity
#   SEEDS="1 2 3 4 5" OUT=chains/sens scripts/sensitivity.sh experiment=positive_train
#   SEARCHED=runs/search/allocation.json scripts/sensitivity.sh budget=match ...
#   SEARCHED='chains/x/search/smollm2_135m/chatterbot_qa/seed{seed}/allocation.json' ...
#     ({seed} is replaced by each seed: every seed is compared with its own search)
#
# Environment: SEEDS (default "1 2 3"), DRAWS (random/shuffled draws per seed, default
# "1 2 3"), METHODS (default: uniform random concentrated concentrated_low, and with
# SEARCHED also shuffled inverted file), KIND (concentrated's module kind without
# SEARCHED, default k_proj; with it, the kind the search values least), OUT (default chains/sensitivity), PYTHON.
# Resumable: a run whose metrics.json exists is skipped. Extra arguments are train.py
# overrides for every run.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-"1 2 3"}
DRAWS=${DRAWS:-"1 2 3"}
OUT=${OUT:-chains/sensitivity}
SEARCHED=${SEARCHED:-}
default="uniform random concentrated concentrated_low"
[ -n "$SEARCHED" ] && default="$default shuffled inverted file"
METHODS=${METHODS:-$default}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline}
failed=0
for seed in $SEEDS; do
    searched=()
    [ -n "$SEARCHED" ] && searched=("searched=${SEARCHED//\{seed\}/$seed}")
    for method in $METHODS; do
        draws=("")
        case "$method" in random | shuffled) read -ra draws <<< "$DRAWS" ;; esac
        for draw in "${draws[@]}"; do
            name=$method extra=()
            if [ -n "$draw" ]; then name="${method}_d$draw"; extra+=("allocation.seed=$draw"); fi
            [ "$method" = uniform ] && extra+=("allocation.experts=2")
            # without a search to name the least valued kind: KIND (default k_proj)
            [ "$method" = concentrated ] && [ -z "$SEARCHED" ] \
                && extra+=("allocation.module_kind=${KIND:-k_proj}")
            dir="$OUT/$method/$name/seed$seed"
            [ -f "$dir/metrics.json" ] && continue
            "$PYTHON" train.py "seed=$seed" "allocation=$method" "${extra[@]}" \
                "${searched[@]}" "$@" "hydra.run.dir=$dir" \
                || { echo "sensitivity: $name seed $seed failed" >&2; failed=1; }
        done
    done
done
"$PYTHON" -m guilomo.sensitivity "$OUT" | tee "$OUT/verdict.md"
exit $failed
