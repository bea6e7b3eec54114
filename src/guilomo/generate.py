"""``python -m guilomo.generate``: run prompts through a trained adapter (greedy).

    python -m guilomo.generate adapter=<run>/adapter prompt="What is AI?"
    python -m guilomo.generate adapter=<run>/adapter prompts_file=prompts.txt out=gen.jsonl

Prompts are wrapped as at training time: with ``template=auto`` (default) the
adapter's recorded task names the template (``alpaca`` / ``plain``) and, when every
training example shared one instruction (e.g. the topic question of
``chatterbot_topic``), the prompt becomes that example's input. ``template=none``
sends the text as typed, ``template=chat`` through the tokenizer's chat template,
``template=alpaca|plain`` names a template (``instruction=...`` sets its
instruction). ``prompts_file`` is a text file (one prompt a line) or JSONL
(``{"prompt": ...}`` a line); a progress bar runs over its batches and ``out=``
writes one JSON line per prompt.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from guilomo.data.example import Example
from guilomo.data.templates import TEMPLATES, get_template
from guilomo.eval.generate import generate
from guilomo.hub import resolve_folder
from guilomo.moe.io import read_adapter_config
from guilomo.pretrained import from_pretrained
from guilomo.utils.cli import parse_args, run
from guilomo.utils.progress import eval_progress

MODES = ("auto", "none", "chat", *TEMPLATES)
USAGE = (
    "usage: python -m guilomo.generate adapter=<dir> (prompt=<text> | prompts_file=<file>) "
    f"[template={'|'.join(MODES)}] [instruction=<text>] [max_new_tokens=64] [batch_size=8] "
    "[out=<file.jsonl>] [allow_base_mismatch=false] [allow_network=false] [progress=true]"
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
    "allow_base_mismatch": False,
    "allow_network": False,
    "progress": True,
}


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a text file (one a line, blank lines skipped) or a JSONL file."""
    path = Path(path)
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix != ".jsonl":
        return lines
    out = []
    for i, ln in enumerate(lines, 1):
        row = json.loads(ln)
        if not isinstance(row, (str, dict)) or (isinstance(row, dict) and "prompt" not in row):
            raise ValueError(f"{path}:{i}: expected a string or an object with 'prompt'")
        out.append(row if isinstance(row, str) else str(row["prompt"]))
    return out


def render_prompts(
    texts: Sequence[str],
    task: Mapping | None,
    template: str = "auto",
    instruction: str | None = None,
    tokenizer=None,
) -> list[str]:
    """What the model sees for each text (see the module doc for the modes)."""
    if template not in MODES:
        raise ValueError(f"template={template!r} is not one of {list(MODES)}")
    if template == "none" or (template == "auto" and not (task or {}).get("template")):
        return list(texts)
    if template == "chat":
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in texts
        ]
    tpl = get_template(task["template"] if template == "auto" else template)
    instr = instruction if instruction is not None else (task or {}).get("instruction")
    return [tpl.render(Example(instr, input=t) if instr else Example(t)) for t in texts]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
    if not args["adapter"] or (args["prompt"] is None) == (args["prompts_file"] is None):
        raise SystemExit(f"{USAGE}\nerror: give adapter= and one of prompt= / prompts_file=")
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
        Path(args["out"]).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} generations to {args['out']}")
    return rows


if __name__ == "__main__":
    run(main)
