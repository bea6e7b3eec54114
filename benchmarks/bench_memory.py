"""Peak host memory (max RSS) of the search and the fine-tune on SmolLM2-135M on CPU,
with and without gradient checkpointing. Prints a table for the README.

    python benchmarks/bench_memory.py [--steps 2] [--batch 8]

Each row is a fresh process running the real entry point (search.py / train.py) with
N_max = r_max = 8 on all 30 layers (the search's full size; the fine-tune trains a
uniform 8 x rank-8 LoRA-MoE, the largest allocation a search can return). The
``load only`` row is the same process stopped right after loading the backbone.
Peak RSS includes Python, torch and the tokenized data, so it is what a machine must
have, not tensor bytes alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import atexit, resource, runpy, sys
atexit.register(lambda: print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True))
if sys.argv[1] == "load":
    from guilomo.backbone import load_backbone
    load_backbone("HuggingFaceTB/SmolLM2-135M-Instruct", source="smollm2_gguf")
    sys.exit(0)
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def run(args: list[str], out: Path) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    cmd = [sys.executable, "-c", CHILD, *args]
    if args[0] != "load":
        cmd.append(f"hydra.run.dir={out}")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("MAXRSS_KB")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(args)} failed:\n{(p.stdout + p.stderr)[-3000:]}")
    return int(lines[-1].split()[1]) / 1024**2  # GiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default="/tmp/guilomo_bench_memory")
    a = ap.parse_args()
    common = [
        "logger=none",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_checkpointing=false",
        f"trainer.max_steps={a.steps}",
        f"task.datamodule.batch_size={a.batch}",
    ]
    search = ["search.py", *common, "search.heatmap=false"]
    train = [
        "train.py",
        *common,
        "allocation=uniform",
        "allocation.experts=8",
        "allocation.rank=8",
        "eval.zero_shot=false",
        "eval.limit=16",
        "save_adapter=false",
    ]
    rows = [("load only", ["load"])]
    for ckpt in (False, True):
        g = f"gradient_checkpointing={str(ckpt).lower()}"
        rows += [
            (f"search 1st  ckpt={ckpt}", [*search, "search.order=first", g]),
            (f"search 2nd  ckpt={ckpt}", [*search, "search.order=second", g]),
            (f"fine-tune   ckpt={ckpt}", [*train, g]),
        ]
    print(f"SmolLM2-135M, fp32, CPU, batch {a.batch}, {a.steps} steps; peak RSS (GiB)")
    for i, (name, args) in enumerate(rows):
        print(f"{name:24s} {run(args, Path(a.out) / str(i)):6.2f}", flush=True)


if __name__ == "__main__":
    main()
