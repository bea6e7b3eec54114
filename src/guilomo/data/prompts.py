"""Prompts typed by a user, as the model saw its training examples.

:func:`read_prompts` reads a text file (one prompt a line, blank lines skipped) or a
JSONL file (``{"prompt": ...}`` or a string a line). :func:`render_prompts` wraps each
text as at training time: with ``template=auto`` (default) the adapter's recorded task
names the template (``alpaca`` / ``plain``) and, when every training example shared one
instruction (e.g. the topic question of ``chatterbot_topic``), the text becomes that
example's input. ``template=none`` sends the text as typed, ``template=chat`` through
the tokenizer's chat template, ``template=alpaca|plain`` names a template
(``instruction=...`` sets its instruction).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from guilomo.data.example import Example
from guilomo.data.templates import TEMPLATES, get_template

MODES = ("auto", "none", "chat", *TEMPLATES)


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
