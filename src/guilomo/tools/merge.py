"""``python -m guilomo.merge``: a full model with the adapter's one-expert modules merged.

    python -m guilomo.merge adapter=<run>/adapter out=<dir>
    python -m guilomo.merge adapter=<run>/adapter out=<dir> collapse=mean prompts_file=<file>

One-expert modules are folded into the base weights exactly; N-expert modules stay a
LoRA-MoE in ``<out>/adapter`` (:mod:`guilomo.moe.merge`), or on explicit request
(``collapse=constant|mean``) are collapsed to one LoRA and merged too, the change to
the logits measured on held-out prompts and printed (:mod:`guilomo.eval.collapse`):
``prompts_file``, rendered with the task's template as ``guilomo.generate`` does, is
split in two, the first half calibrates the mean gates, the second is held out.

``out=`` is a new folder (or ``overwrite=true``), never the adapter, inside it or
around it, never a file already in the adapter's run folder; it is written in a
temporary sibling and renamed into place when complete.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from guilomo.data.prompts import read_prompts, render_prompts
from guilomo.eval.collapse import collapse_measured
from guilomo.hub import resolve_folder
from guilomo.moe.collapse import GATES
from guilomo.moe.io import read_adapter_config
from guilomo.moe.merge import merge_model
from guilomo.pretrained import from_pretrained
from guilomo.rundir import run_folder_of
from guilomo.utils.cli import parse_args, run
from guilomo.utils.io import check_output, staged_folder

USAGE = (
    "usage: python -m guilomo.merge adapter=<dir> out=<dir> [collapse=none|constant|mean "
    "prompts_file=<file>] [batch_size=8] [overwrite=false] [allow_base_mismatch=false]"
)
DEFAULTS = {
    "adapter": None,
    "out": None,
    "collapse": "none",
    "prompts_file": None,
    "batch_size": 8,
    "overwrite": False,
    "allow_base_mismatch": False,
}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if not args["adapter"] or not args["out"]:
        raise SystemExit(f"{USAGE}\nerror: adapter= and out= are required")
    if args["collapse"] not in ("none", *GATES):
        raise ValueError(f"collapse={args['collapse']!r} is not one of {['none', *GATES]}")
    if args["collapse"] != "none" and not args["prompts_file"]:
        raise SystemExit(f"{USAGE}\nerror: collapse= needs prompts_file= (see --help)")
    inputs = {"adapter": args["adapter"], "prompts_file": args["prompts_file"]}
    run_folder = {"the run folder of adapter=": run_folder_of(args["adapter"])}
    check_output(args["out"], inputs, args["overwrite"], protected=run_folder)
    folder = resolve_folder(args["adapter"])
    allocation, _, meta = read_adapter_config(folder)
    texts = read_prompts(args["prompts_file"]) if args["collapse"] != "none" else []
    model, tokenizer = from_pretrained(folder, allow_base_mismatch=args["allow_base_mismatch"])
    collapsed = None
    if args["collapse"] != "none":
        texts = render_prompts(texts, meta.get("task"), tokenizer=tokenizer)
        allocation, collapsed = collapse_measured(
            model, allocation, args["collapse"], tokenizer, texts
        )
    with staged_folder(args["out"]) as tmp:
        report = merge_model(model, tokenizer, allocation, meta, tmp, collapsed)
    print(
        f"merged {report['merged']} one-expert modules into {args['out']}; "
        f"{report['kept']} N-expert modules kept as LoRA-MoE"
        + (
            f" in {Path(args['out']) / 'adapter'} (e.g. {report['kept_modules'][:2]})"
            if report["kept"]
            else ""
        )
    )
    print(json.dumps({k: v for k, v in report.items() if k != "kept_modules"}))
    return report


if __name__ == "__main__":
    run(main)
