"""Check a peft export and a merge of an adapter against the adapter itself (README numbers).

    python scripts/check_export.py <run>/adapter <peft folder> <merged folder>

Loads the adapter with ``guilomo.from_pretrained``; loads the peft folder with peft's own
``PeftModel.from_pretrained`` onto the base the adapter records (rebuilt by
``guilomo.backbone.load_backbone``: for SmolLM2, the dequantised GGUF, not the Hub
checkpoint), then ``merge_and_unload()``; loads the merged folder with transformers'
``AutoModelForCausalLM``. Prints each one's largest |logit difference| from the adapter
over the real tokens of two prompts (fp32), and whether the greedy next tokens agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from guilomo import from_pretrained
from guilomo.backbone import load_backbone
from guilomo.moe.collapse import logit_difference

PROMPTS = ["What is a computer program?", "Tell me about your favourite movie."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("adapter")
    ap.add_argument("peft")
    ap.add_argument("merged")
    args = ap.parse_args()
    ours, tok = from_pretrained(args.adapter)
    batch = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    loader = json.loads((Path(args.adapter) / "adapter_config.json").read_text())["backbone"]
    base, _ = load_backbone(**loader["loader"])
    peft_model = PeftModel.from_pretrained(base, args.peft).eval()
    with torch.no_grad():
        ref = ours(**batch).logits
        rows = {"peft PeftModel.from_pretrained": peft_model(**batch).logits}
        rows["peft merge_and_unload()"] = peft_model.merge_and_unload()(**batch).logits
        merged = AutoModelForCausalLM.from_pretrained(args.merged).eval()
        rows["guilomo.merge folder (transformers)"] = merged(**batch).logits
    mask = batch["attention_mask"]
    print(f"against guilomo.from_pretrained, {int(mask.sum())} tokens, fp32:")
    for name, logits in rows.items():
        d = logit_difference(ref, logits, mask)
        print(f"  {name:38s} max |diff| {d['max_abs']:.2e}   top-1 agreement {d['top1_agree']:.3f}")


if __name__ == "__main__":
    main()
