"""``python -m guilomo.export_peft``: the adapter's one-expert modules as a genuine peft LoRA.

    python -m guilomo.export_peft adapter=<run>/adapter out=<dir>
    python -m guilomo.export_peft adapter=<run>/adapter out=<dir> only_single=true
    python -m guilomo.export_peft adapter=<run>/adapter out=<dir> uniform_rank=true

The folder (:mod:`guilomo.moe.peft_export`) holds ``LoraConfig`` with exact module
paths and per-module ranks and scales (``uniform_rank=true``: one rank, scales folded
into B, for servers such as vLLM), the weights, a model card and the tokenizer.
N-expert modules have a router peft cannot express: the export stops and names them,
unless ``only_single=true`` (they are left out, and listed) or
``collapse=constant|mean prompts_file=...`` (collapsed to one LoRA first, with the
logit difference measured, as in ``guilomo.merge``). peft is needed (``pip install peft``).

``out=`` is a new folder (or ``overwrite=true``), never the adapter, inside it or
around it, never a file already in the adapter's run folder; it is written in a
temporary sibling and renamed into place when complete.
"""

from __future__ import annotations

import json
import sys

from guilomo.data.prompts import read_prompts, render_prompts
from guilomo.eval.collapse import collapse_measured
from guilomo.hub import resolve_folder
from guilomo.moe.collapse import GATES
from guilomo.moe.io import read_adapter_config
from guilomo.moe.peft_export import export_peft
from guilomo.pretrained import from_pretrained
from guilomo.rundir import run_folder_of
from guilomo.utils.cli import parse_args, run
from guilomo.utils.io import check_output, staged_folder

USAGE = (
    "usage: python -m guilomo.export_peft adapter=<dir> out=<dir> [only_single=false] "
    "[uniform_rank=false] [collapse=none|constant|mean prompts_file=<file>] "
    "[overwrite=false] [allow_base_mismatch=false]"
)
DEFAULTS = {
    "adapter": None,
    "out": None,
    "only_single": False,
    "uniform_rank": False,
    "collapse": "none",
    "prompts_file": None,
    "overwrite": False,
    "allow_base_mismatch": False,
}


def _check_experts(allocation, args: dict) -> None:
    """Refuse, before the model loads, an export that would stop on N-expert modules."""
    if args["collapse"] != "none":
        return
    multi = sorted(n for n, m in allocation.modules.items() if m.experts > 1)
    if multi and not args["only_single"]:
        raise ValueError(
            f"adapter={args['adapter']}: {len(multi)} of {len(allocation.modules)} modules have "
            f"more than one expert (e.g. {multi[:2]}); a router has no peft LoRA form: pass "
            "only_single=true to export the one-expert modules alone, or collapse=constant|mean "
            "prompts_file=<file> (an approximation, measured)"
        )
    if len(multi) == len(allocation.modules):
        raise ValueError(
            f"adapter={args['adapter']}: no module has one expert, so only_single=true exports "
            "nothing: pass collapse=constant|mean prompts_file=<file> instead"
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if not args["adapter"] or not args["out"]:
        raise SystemExit(f"{USAGE}\nerror: adapter= and out= are required")
    if args["collapse"] not in ("none", *GATES):
        raise ValueError(f"collapse={args['collapse']!r} is not one of {['none', *GATES]}")
    if args["collapse"] != "none" and not args["prompts_file"]:
        raise SystemExit(f"{USAGE}\nerror: collapse= needs prompts_file=")
    inputs = {"adapter": args["adapter"], "prompts_file": args["prompts_file"]}
    run_folder = {"the run folder of adapter=": run_folder_of(args["adapter"])}
    check_output(args["out"], inputs, args["overwrite"], protected=run_folder)
    folder = resolve_folder(args["adapter"])
    allocation, _, meta = read_adapter_config(folder)
    _check_experts(allocation, args)
    texts = read_prompts(args["prompts_file"]) if args["collapse"] != "none" else []
    model, tokenizer = from_pretrained(folder, allow_base_mismatch=args["allow_base_mismatch"])
    if args["collapse"] != "none":
        texts = render_prompts(texts, meta.get("task"), tokenizer=tokenizer)
        collapse_measured(model, allocation, args["collapse"], tokenizer, texts)
    with staged_folder(args["out"]) as tmp:
        report = export_peft(model, meta, tmp, tokenizer, args["only_single"], args["uniform_rank"])
    print(
        f"wrote a peft LoRA of {report['exported']} modules to {args['out']} (r={report['r']}"
        f"{', rank_pattern' if report['rank_pattern'] else ''}); left out "
        f"{report['left_out']} N-expert modules"
    )
    print(json.dumps({k: v for k, v in report.items() if k != "left_out_modules"}))
    return report


if __name__ == "__main__":
    run(main)
