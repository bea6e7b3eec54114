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

from guilomo.moe.merge import merge_model
from guilomo.tools.collapsing import check_args, load_collapsed, read_adapter
from guilomo.utils.cli import parse_args, run
from guilomo.utils.io import staged_folder

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
    check_args(args, USAGE)
    folder, allocation, meta = read_adapter(args)
    model, tokenizer, allocation, collapsed = load_collapsed(args, folder, allocation, meta)
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
