#!/usr/bin/env bash
# Held-out loss against budget for uniform and concentrated (docs/results.md Run 4, issue
# 22 point 4): where more parameters still help is where placement can matter.
#
#   scripts/capacity_curve.sh experiment=positive_train      # BUDGETS x SEEDS x methods
#   python scripts/capacity_plot.py chains/capacity docs/capacity_curve.png
#
# Environment: BUDGETS (params; default "250000 400000 1000000 2400000"), SEEDS (default
# "1 2 3"), METHODS (default "uniform concentrated"), OUT (default chains/capacity), PYTHON.
# Resumable: a run whose metrics.json exists is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGETS=${BUDGETS:-"250000 400000 1000000 2400000"}
SEEDS=${SEEDS:-"1 2 3"}
OUT=${OUT:-chains/capacity}
failed=0
for budget in $BUDGETS; do
    OUT="$OUT/params$budget" SEEDS="$SEEDS" METHODS="${METHODS:-uniform concentrated}" \
        scripts/sensitivity.sh budget=params "budget.value=$budget" "$@" || failed=1
done
exit $failed
