#!/usr/bin/env bash
# The whole chain in three Hydra multiruns: GSV search per task and seed -> fine-tune
# GuiLoMo's allocation and every baseline at its trainable parameters (budget=match)
# -> the method x task table.
#
#   scripts/chain.sh cpu_twin                      # SmolLM2 (LoRA-MoE on the top 4 of 30 layers), offline tasks, CPU
#   scripts/chain.sh paper                         # the paper's grid (GPU, hub)
#   TASKS=chatterbot_topic SEEDS=1 scripts/chain.sh cpu_twin backbone=tiny_llama ...
#
# Uses experiment files <name>_search and <name>_train (conf/experiment/). Extra
# arguments are Hydra overrides for both stages; SEARCH_ARGS / TRAIN_ARGS hold
# overrides for one stage only (space-separated). Environment:
#   TASKS    comma list (default: chatterbot_topic,bigbench_multiemo for cpu_twin,
#            the paper's seven for paper)
#   SEEDS    comma list (default 1,2,3); METHODS (default file,lora,uniform,mola_2468,alphalora,random,adalora)
#   SEARCH_SEEDS  seeds to search (default SEEDS); e.g. SEARCH_SEEDS=1 TRAIN_ARGS=chain.search_seed=1
#            searches once per task and fine-tunes every seed from that search
#   PYTHON   (default .venv/bin/python); PROJECT_ROOT: where chains/<name>/ is written (default .)
# Outputs: chains/<name>/search/<backbone>/<task>/seed<s>/allocation.json,
# chains/<name>/train/<time>/<backbone>/<task>/<method>/seed<s>/metrics.json and
# chains/<name>/train/<time>/results.{md,csv}.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
name=${1:?usage: scripts/chain.sh cpu_twin|paper [hydra overrides...]}
shift
case "$name" in
    paper) default_tasks=scienceqa,commonsense_qa,openbookqa,glue_cola,glue_mrpc,glue_rte,gsm8k ;;
    *) default_tasks=chatterbot_topic,bigbench_multiemo ;;
esac
TASKS=${TASKS:-$default_tasks}
SEEDS=${SEEDS:-1,2,3}
SEARCH_SEEDS=${SEARCH_SEEDS:-$SEEDS}
METHODS=${METHODS:-file,lora,uniform,mola_2468,alphalora,random,adalora}
read -ra search_args <<< "${SEARCH_ARGS:-}"
read -ra train_args <<< "${TRAIN_ARGS:-}"

# where this chain writes (chain.root of the composed train config)
root=$("$PYTHON" train.py "experiment=${name}_train" "$@" "${train_args[@]}" \
    --cfg job --package chain --resolve | sed -n 's/^root: //p')
stamp=$(date +%Y-%m-%d_%H-%M-%S)
sweep="$root/train/$stamp"
echo "chain $name: tasks $TASKS, seeds $SEEDS, methods $METHODS -> $root"

set -x
"$PYTHON" search.py -m "experiment=${name}_search" "seed=$SEARCH_SEEDS" "task=$TASKS" \
    "$@" "${search_args[@]}"
# seed first: Hydra sweeps the first list slowest, so every finished seed is complete
# a failed job does not stop the others (Hydra reports it at the end); tabulate what finished
status=0
"$PYTHON" train.py -m "experiment=${name}_train" "seed=$SEEDS" "task=$TASKS" \
    "allocation=$METHODS" "hydra.sweep.dir=$sweep" "$@" "${train_args[@]}" || status=$?
"$PYTHON" -m guilomo.results "$sweep" --csv "$sweep/results.csv" --overwrite | tee "$sweep/results.md"
exit "$status"
