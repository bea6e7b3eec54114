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

from guilomo.moe.peft_export import export_peft
from guilomo.tools.collapsing import check_args, load_collapsed, read_adapter
from guilomo.utils.cli import parse_args, run
from guilomo.utils.io import staged_folder

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
    check_args(args, USAGE)
    folder, allocation, meta = read_adapter(args)
    _check_experts(allocation, args)
    model, tokenizer, _, _ = load_collapsed(args, folder, allocation, meta)
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
