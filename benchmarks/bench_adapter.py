"""Time one adapted linear layer, forward + backward, against its FLOP floor.

Variants (all with a frozen d x d base, no bias, dropout 0, fp32, one thread):

- ``base``:   the frozen ``nn.Linear`` alone (input requires grad, so backward
  computes the input gradient but no weight gradient);
- ``peft``:   peft LoRA of rank ``k * r`` (the active rank of one token in the MoE);
- ``loop``:   ``LoraMoELinear(impl="loop")``, N experts of rank r, top-k;
- ``masked``: ``LoraMoELinear(impl="masked")``, same allocation.

All variants are timed round-robin in one process (so a burst of load from
other jobs hits all of them alike); each entry is the median over the rounds
after the warm-up rounds. The CPU share of the process during the timed window
(process CPU time / wall time) is printed; below 0.9 another job took the core
and the run is marked ``contended``: rerun it when the machine is quieter. The
1-min load average is printed too: a busy second core does not steal this
process's CPU time but shares the memory bandwidth and the last-level cache, which
slows the memory-bound parts of the adapters (x/floor moves by ~+-0.05 between
runs on this 2-core machine).

The floor of a variant is its FLOP count from the formulas of
``docs/performance.md`` (per token: base 4 d_in d_out; LoRA rank r:
6 r (d_in + d_out); dense masked MoE: 6 (d_in + d_out) R + 6 N d_in; sparse
top-k loop: 6 (d_in + d_out) k r + 6 N d_in) divided by the FLOP rate the base
layer reached in this run (4 T d^2 / median base time); ``floor ms`` shows it.
``x/floor`` = time / floor: how close the variant gets to running all its
arithmetic at the speed of the base GEMMs. All ratios (``x/floor``, ``x/base``,
``masked/loop``, ``masked/peft``) are medians over rounds of the ratio of the two
times measured in the same round (paired, so slow drifts of the machine cancel);
``x/floor`` of a variant = (its time / base time) * (base FLOPs / its FLOPs).

    .venv/bin/python benchmarks/bench_adapter.py [--dims 1024 2048] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from guilomo.moe import LoraMoEConfig, LoraMoELinear


def make_variants(d: int, n: int, r: int, k: int, seed: int = 0) -> dict[str, nn.Module]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = nn.Linear(d, d, bias=False).requires_grad_(False)

    class Wrap(nn.Module):
        def __init__(self, lin: nn.Linear):
            super().__init__()
            self.proj = lin

        def forward(self, x):
            return self.proj(x)

    peft_model = get_peft_model(
        Wrap(nn.Linear(d, d, bias=False)),
        LoraConfig(r=k * r, lora_alpha=16, lora_dropout=0.0, target_modules=["proj"]),
    )
    peft_layer = peft_model.base_model.model.proj
    with torch.no_grad():
        peft_layer.base_layer.weight.copy_(base.weight)

    variants: dict[str, nn.Module] = {"base": base, "peft": peft_layer}
    for impl in ("loop", "masked"):
        layer = LoraMoELinear(
            nn.Linear(d, d, bias=False), [r] * n, k, LoraMoEConfig(dropout=0.0, impl=impl)
        )
        with torch.no_grad():
            layer.base.weight.copy_(base.weight)
            nn.init.normal_(layer.lora_B, std=0.02)  # nonzero B: the delta is real work
        variants[impl] = layer
    if "masked" in variants:  # same adapter weights in loop and masked
        variants["masked"].load_state_dict(variants["loop"].state_dict())
    for m in variants.values():
        m.train()
    return variants


def floor_flops(name: str, d: int, T: int, n: int, r: int, k: int) -> float:
    base = 4 * d * d
    extra = {
        "base": 0,
        "peft": 6 * (k * r) * (d + d),
        "loop": 6 * (d + d) * (k * r) + 6 * n * d,
        "masked": 6 * (d + d) * (n * r) + 6 * n * d,
    }[name]
    return float(T * (base + extra))


def step(module: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> None:
    for p in module.parameters():
        p.grad = None
    x.grad = None
    module(x).backward(gy)


def bench(d: int, T: int, n: int, r: int, k: int, rounds: int, warmup: int, reps: int) -> dict:
    variants = make_variants(d, n, r, k)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, d, generator=g).requires_grad_(True)
    gy = torch.randn(T, d, generator=g)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(warmup + rounds):
        if i == warmup:
            cpu0, wall0 = time.process_time(), time.perf_counter()
        for name, m in variants.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                step(m, x, gy)
            dt = (time.perf_counter() - t0) / reps
            if i >= warmup:
                times[name].append(dt)
    share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    rate = floor_flops("base", d, T, n, r, k) / med["base"]  # FLOP/s of the base GEMMs
    floor = {name: floor_flops(name, d, T, n, r, k) / rate for name in variants}

    def paired(a: str, b: str) -> float:
        """Median over rounds of time[a] / time[b] measured in the same round."""
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    over_base = {name: paired(name, "base") for name in variants}
    ratio = {
        "x/floor": {
            name: over_base[name]
            * floor_flops("base", d, T, n, r, k)
            / floor_flops(name, d, T, n, r, k)
            for name in variants
        },
        "x/base": over_base,
        "masked/loop": paired("masked", "loop"),
        "masked/peft": paired("masked", "peft"),
    }
    return {"d": d, "median": med, "floor": floor, "rate": rate, "share": share, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, r, k, T = args.experts, args.rank, args.top_k, args.tokens
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), fp32, T={T}, N={n}, r={r}, "
        f"k={k}, R={n * r}, peft rank={k * r}, median of {args.rounds} rounds "
        f"after {args.warmup} warm-ups, forward+backward"
    )
    header = (
        f"{'d':>5} {'variant':>7} {'ms':>9} {'floor ms':>9} {'x/floor':>8} {'x/base':>7} "
        f"{'masked/loop':>11} {'masked/peft':>11}"
    )
    for d in args.dims:
        reps = max(1, round(2048 * 2048 / (d * d)))  # ~equal work per measurement
        res = bench(d, T, n, r, k, args.rounds, args.warmup, reps)
        med, floor, ratio = res["median"], res["floor"], res["ratio"]
        print(header)
        for name in med:
            extra = ""
            if name == "masked":
                extra = f" {ratio['masked/loop']:>11.3f} {ratio['masked/peft']:>11.3f}"
            print(
                f"{d:>5} {name:>7} {1e3 * med[name]:>9.2f} {1e3 * floor[name]:>9.2f} "
                f"{ratio['x/floor'][name]:>8.3f} {ratio['x/base'][name]:>7.3f}{extra}"
            )
        state = "ok" if res["share"] >= 0.9 else "contended"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"d={d}: base rate {res['rate'] / 1e9:.1f} GFLOP/s, CPU share {res['share']:.2f} "
            f"({state}), 1-min load average {load:.2f}"
        )
        print(
            f"d={d} targets: masked/floor {ratio['x/floor']['masked']:.3f} (<= 1.10), "
            f"masked/loop {ratio['masked/loop']:.3f} (<= 0.90 at d=1024), "
            f"masked/peft {ratio['masked/peft']:.3f} (<= 1.20 at d=1024)"
        )


if __name__ == "__main__":
    main()
