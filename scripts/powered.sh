#!/usr/bin/env bash
# The powered comparison of issue 17 (docs/results.md): per task and seed, the budgeted
# search, then GuiLoMo's allocation and every baseline at exactly its trainable
# parameters: 3 random draws (allocation.seed), uniform, LoRA, AdaLoRA (peft) and the
# deliberately poor `concentrated` allocation. Resumable: a job whose metrics.json
# exists is skipped, so re-running the script finishes what a session left.
#
#   scripts/powered.sh                       # vader_intensity x 5 seeds, vader_polarity x 5
#   CELLS="vader_intensity:1" scripts/powered.sh backbone.loader.num_layers=8   # one cell
#   python -m guilomo.results --paired guilomo chains/powered/train
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CELLS=${CELLS:-"vader_polarity:1 vader_intensity:1 vader_intensity:2 vader_intensity:3 vader_intensity:4 vader_intensity:5 vader_polarity:2 vader_polarity:3 vader_polarity:4 vader_polarity:5"}
METHODS=${METHODS:-"file random:1 random:2 random:3 uniform lora adalora concentrated"}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
root=chains/powered
for cell in $CELLS; do
    task=${cell%%:*}; seed=${cell##*:}
    search="$root/search/smollm2_135m/$task/seed$seed"
    if [ ! -f "$search/metrics.json" ]; then
        "$PYTHON" search.py experiment=powered_search "task=$task" "seed=$seed" "$@" \
            || { echo "search $task seed $seed failed" >&2; continue; }
    fi
    for m in $METHODS; do
        alloc=${m%%:*}; draw=""; name=$alloc
        [ "$alloc" = file ] && name=guilomo
        if [ "$alloc" != "$m" ]; then draw=${m##*:}; name="${alloc}_d$draw"; fi
        dir="$root/train/smollm2_135m/$task/$name/seed$seed"
        [ -f "$dir/metrics.json" ] && continue
        extra=()
        [ -n "$draw" ] && extra+=("allocation.seed=$draw")
        # uniform: 2 experts (top-2) everywhere, ranks scaled to the budget (8 experts even at
        # rank 1 cost more than the searched allocations here)
        [ "$alloc" = uniform ] && extra+=("allocation.experts=2")
        "$PYTHON" train.py experiment=powered_train "task=$task" "seed=$seed" \
            "allocation=$alloc" "${extra[@]}" "hydra.run.dir=$dir" "$@" \
            || echo "train $name $task seed $seed failed" >&2
    done
done
"$PYTHON" -m guilomo.results --paired guilomo "$root/train" --csv "$root/results.csv" --overwrite \
    | tee "$root/results.md"
