"""``python -m guilomo.generate``: run prompts through a trained adapter (greedy).

    python -m guilomo.generate adapter=<run>/adapter prompt="What is AI?"
    python -m guilomo.generate adapter=<run>/adapter prompts_file=prompts.txt out=gen.jsonl

Prompts are wrapped as at training time (:mod:`guilomo.data.prompts`: ``template=auto``
uses the adapter's recorded task; ``none``, ``chat``, ``alpaca``, ``plain``;
``instruction=...``). ``prompts_file`` is a text file (one prompt a line) or JSONL
(``{"prompt": ...}`` a line); a progress bar runs over its batches and ``out=`` writes
one JSON line per prompt (a new file, or ``overwrite=true``; never an input).
"""

from __future__ import annotations

import json
import sys

from guilomo.data.prompts import MODES, read_prompts, render_prompts
from guilomo.eval.generate import generate
from guilomo.hub import resolve_folder
from guilomo.moe.io import read_adapter_config
from guilomo.pretrained import from_pretrained
from guilomo.rundir import run_folder_of
from guilomo.utils.cli import parse_args, run
from guilomo.utils.io import atomic_write_text, check_output
from guilomo.utils.progress import eval_progress

USAGE = (
    "usage: python -m guilomo.generate adapter=<dir> (prompt=<text> | prompts_file=<file>) "
    f"[template={'|'.join(MODES)}] [instruction=<text>] [max_new_tokens=64] [batch_size=8] "
    "[out=<file.jsonl>] [overwrite=false] [allow_base_mismatch=false] [allow_network=false] "
    "[progress=true]"
)
DEFAULTS = {
    "adapter": None,
    "prompt": None,
    "prompts_file": None,
    "template": "auto",
    "instruction": None,
    "max_new_tokens": 64,
    "batch_size": 8,
    "out": None,
    "overwrite": False,
    "allow_base_mismatch": False,
    "allow_network": False,
    "progress": True,
}


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if not args["adapter"] or (args["prompt"] is None) == (args["prompts_file"] is None):
        raise SystemExit(f"{USAGE}\nerror: give adapter= and one of prompt= / prompts_file=")
    if args["template"] not in MODES:
        raise ValueError(f"template={args['template']!r} is not one of {list(MODES)}")
    if args["out"]:
        inputs = {"adapter": args["adapter"], "prompts_file": args["prompts_file"]}
        run_folder = {"the run folder of adapter=": run_folder_of(args["adapter"])}
        check_output(args["out"], inputs, args["overwrite"], protected=run_folder, kind="file")
    texts = [args["prompt"]] if args["prompt"] is not None else read_prompts(args["prompts_file"])
    folder = resolve_folder(args["adapter"], allow_network=args["allow_network"])
    task = read_adapter_config(folder)[2].get("task")
    model, tokenizer = from_pretrained(folder, allow_base_mismatch=args["allow_base_mismatch"])
    prompts = render_prompts(texts, task, args["template"], args["instruction"], tokenizer)
    show = args["progress"] and len(prompts) > args["batch_size"]
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=args["max_new_tokens"],
        batch_size=args["batch_size"],
        progress=eval_progress("generate", enabled=show),
    )
    rows = [
        {"prompt": t, "input": p, "output": o}
        for t, p, o in zip(texts, prompts, outputs, strict=True)
    ]
    for row in rows:
        print(f"### {row['prompt']}\n{row['output']}")
    if args["out"]:
        atomic_write_text(args["out"], "".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} generations to {args['out']}")
    return rows


if __name__ == "__main__":
    run(main)
