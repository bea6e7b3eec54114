"""Model cards (``README.md`` in the Hub's format) for the folders guilomo writes.

A card is a YAML header (``library_name``, ``base_model`` when the backbone has a Hub
id, ``tags``, ``pipeline_tag``) and a markdown body. :func:`adapter_card` describes a
LoRA-MoE adapter folder from its ``adapter_config.json`` (allocation summary and the
expert counts per layer, base weights, task, test metrics, how to use it);
:func:`peft_card` a peft LoRA export and :func:`merged_card` a merged full model.
Pure text: the callers write the file.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from guilomo.allocation import Allocation, layer_of
from guilomo.moe.provenance import describe

CARD_FILE = "README.md"
TAGS = ["guilomo", "lora-moe", "mixture-of-experts", "lora"]


def render(header: Mapping, body: str) -> str:
    head = yaml.safe_dump(dict(header), sort_keys=False, allow_unicode=True).strip()
    return f"---\n{head}\n---\n\n{body.strip()}\n"


def header(meta: Mapping, library_name: str, extra_tags=()) -> dict:
    out: dict = {"library_name": library_name}
    base = meta.get("base_model")
    if base and "/" in str(base):  # a Hub id (a bare alias or random init is not one)
        out["base_model"] = str(base)
    task = (meta.get("task") or {}).get("id")
    out["tags"] = list(dict.fromkeys([*TAGS, *extra_tags, *([task] if task else [])]))
    out["pipeline_tag"] = "text-generation"
    return out


def layer_table(alloc: Allocation) -> str:
    """Per decoder layer: adapted modules, experts, total rank."""
    rows: dict[int, list[int]] = {}
    for name, m in alloc.modules.items():
        row = rows.setdefault(layer_of(name), [0, 0, 0])
        row[0] += 1
        row[1] += m.experts
        row[2] += m.total_rank
    lines = ["| layer | modules | experts | total rank |", "|---|---|---|---|"]
    lines += [f"| {k} | {a} | {b} | {c} |" for k, (a, b, c) in sorted(rows.items())]
    return "\n".join(lines)


def metrics_text(metrics: Mapping | None) -> str:
    if not metrics:
        return "Test metrics: not recorded with this folder."
    n = metrics.get("n")
    vals = ", ".join(
        f"{k} {v:.4f}"
        for k, v in metrics.items()
        if k not in ("n", "invalid") and isinstance(v, float)
    )
    return f"Test metrics (held-out test split{f', {n} examples' if n else ''}): {vals}."


def adapter_card(meta: Mapping, metrics: Mapping | None = None) -> str:
    alloc = Allocation.from_dict(meta["allocation"])
    lora = meta.get("lora", {})
    task = meta.get("task") or {}
    single = sum(m.experts == 1 for m in alloc.modules.values())
    body = f"""
# LoRA-MoE adapter ({alloc.method}) for {meta.get("base_model") or "?"}

A [guilomo](https://arxiv.org/abs/2506.14646) LoRA-MoE adapter (`peft_type:
{meta.get("peft_type")}`): every adapted linear layer has its own number of LoRA experts
and ranks, mixed by a top-k router. It is **not** a peft LoRA: `peft.PeftModel` cannot
load it; `guilomo.from_pretrained` can.

- Allocation: {alloc.method}, {alloc.summary()}; {single} of {len(alloc.modules)} modules have one
  expert (exportable as a peft LoRA and mergeable exactly).
- Scaling: alpha {lora.get("alpha")}, `{lora.get("scaling")}` (`per_expert`: expert i is scaled
  by alpha / r_i; `last_expert`: every expert by alpha / r_last, the reference code's rule).
- Base weights: {describe(meta.get("backbone") or {})}; checksum
  `{(meta.get("backbone") or {}).get("checksum")}`.
- Task: {task.get("id") or "not recorded"}{f" (prompt template `{task['template']}`)" if task.get("template") else ""}.
  {metrics_text(metrics)}

## Use

```python
import guilomo

model, tokenizer = guilomo.from_pretrained("<this folder or Hub repo>")  # allow_network=True for a Hub id
inputs = tokenizer(["What is AI?"], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
print(tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))
```

```bash
python -m guilomo.generate adapter=<this folder> prompt="What is AI?"
python -m guilomo.export_peft adapter=<this folder> out=<peft folder>   # one-expert modules
python -m guilomo.merge adapter=<this folder> out=<model folder>
python -m guilomo.push folder=<this folder> repo_id=<user>/<name>
```

## Experts per layer

{layer_table(alloc)}
"""
    return render(header(meta, "guilomo"), body)


def peft_card(meta: Mapping, report: Mapping) -> str:
    body = f"""
# LoRA (peft) exported from a guilomo adapter

A plain peft LoRA folder (`peft_type: LORA`) of {report["exported"]} modules, written by
`guilomo.export_peft` from a LoRA-MoE adapter whose exported modules have one expert
(or were collapsed to one). `PeftModel.from_pretrained(base, "<this folder>")` gives the
adapter's outputs on the same base weights: {describe(meta.get("backbone") or {})}.
{"Ranks differ per module (`rank_pattern`)." if report.get("rank_pattern") else "One rank and one alpha for every module."}
Left out: {report["left_out"]} modules with more than one expert.
"""
    return render(header(meta, "peft", ["peft-export"]), body)


def merged_card(meta: Mapping, report: Mapping) -> str:
    c = report.get("collapse")
    measured = (
        f" ({c['collapse']} gates; on {c['tokens']} held-out tokens the logits moved by at most "
        f"{c['max_abs']:.4g}, {c['mean_abs']:.4g} on average, and the top-1 token agreed on "
        f"{c['top1_agree']:.2%} of them)"
        if c
        else ""
    )
    body = f"""
# Full model merged from a guilomo LoRA-MoE adapter

`guilomo.merge` folded {report["merged"]} one-expert modules of a LoRA-MoE adapter into
the base weights ({describe(meta.get("backbone") or {})}), exactly: W' = W + (alpha / r) B A.
Of those, {report["collapsed"]} were N-expert modules collapsed to one LoRA by fixing their
router's gates, an approximation{measured}. Modules still LoRA-MoE (input-dependent
routing has no exact merge): {report["kept"]}{
        "; they are in `adapter/`: `guilomo.from_pretrained('<this folder>/adapter')`"
        if report["kept"]
        else ""
    }.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```
"""
    return render(header(meta, "transformers", ["merged"]), body)
