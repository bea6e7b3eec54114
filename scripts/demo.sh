#!/usr/bin/env bash
# Demo: search an allocation on the default backbone/task, then fine-tune with it.
# Extra arguments are Hydra overrides for the search, e.g. scripts/demo.sh search.order=second
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

"$PYTHON" search.py experiment=demo_search "$@" | tee "$log"
# search.py prints the path of the allocation file it wrote; take the last one printed
alloc=$(grep -o '[^[:space:]"'\'']*allocation\.json' "$log" | tail -n 1 || true)
if [[ -z "$alloc" || ! -f "$alloc" ]]; then
    echo "demo: no allocation.json path found in the search output" >&2
    exit 1
fi
"$PYTHON" train.py experiment=demo_train allocation=file "allocation.path=$alloc"
