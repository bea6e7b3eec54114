"""What ``export_peft`` and ``merge`` share: check the arguments and ``out=``, then load the
adapter and, on request, collapse its N-expert modules with the change measured.

:func:`check_args` runs before anything loads (one-line errors naming the key);
:func:`read_adapter` reads the adapter's allocation and record (still no weights);
:func:`load_collapsed` loads the model and collapses it when ``collapse`` is not ``none``.
"""

from __future__ import annotations

from guilomo.data.prompts import read_prompts, render_prompts
from guilomo.eval.collapse import collapse_measured
from guilomo.hub import resolve_folder
from guilomo.moe.collapse import GATES
from guilomo.moe.io import read_adapter_config
from guilomo.pretrained import from_pretrained
from guilomo.rundir import run_folder_of
from guilomo.utils.io import check_output


def check_args(args: dict, usage: str) -> None:
    """``adapter=``, ``out=``, ``collapse=`` and ``prompts_file=`` before any work."""
    if not args["adapter"] or not args["out"]:
        raise SystemExit(f"{usage}\nerror: adapter= and out= are required")
    if args["collapse"] not in ("none", *GATES):
        raise ValueError(f"collapse={args['collapse']!r} is not one of {['none', *GATES]}")
    if args["collapse"] != "none" and not args["prompts_file"]:
        raise SystemExit(f"{usage}\nerror: collapse= needs prompts_file= (see --help)")
    inputs = {"adapter": args["adapter"], "prompts_file": args["prompts_file"]}
    run_folder = {"the run folder of adapter=": run_folder_of(args["adapter"])}
    check_output(args["out"], inputs, args["overwrite"], protected=run_folder)


def read_adapter(args: dict):
    """``(folder, allocation, meta)`` of ``adapter=`` (no weights loaded)."""
    folder = resolve_folder(args["adapter"])
    allocation, _, meta = read_adapter_config(folder)
    return folder, allocation, meta


def load_collapsed(args: dict, folder, allocation, meta):
    """``(model, tokenizer, allocation, collapsed)``: the adapter on its backbone; with
    ``collapse`` set, its N-expert modules collapsed on the rendered prompts (``collapsed``:
    the measured record, else None)."""
    texts = read_prompts(args["prompts_file"]) if args["collapse"] != "none" else []
    model, tokenizer = from_pretrained(folder, allow_base_mismatch=args["allow_base_mismatch"])
    collapsed = None
    if args["collapse"] != "none":
        texts = render_prompts(texts, meta.get("task"), tokenizer=tokenizer)
        allocation, collapsed = collapse_measured(
            model, allocation, args["collapse"], tokenizer, texts
        )
    return model, tokenizer, allocation, collapsed
