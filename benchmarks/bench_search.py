"""Time one step of the shipped search and of the reference's against a fine-tune step.

Variants, each on its own copy of a toy LLaMA (fp32, one thread, same batch size):

- ``finetune``: forward + backward + clip + AdamW on a LoRA-MoE with the search's
  maximum sizes (``n_max`` experts of rank ``r_max`` in every module, top-2) and
  ``L_lm + aux_coef * L_aux``: the stage-2 step;
- ``search-1st`` / ``search-2nd``: one real step of the product's search loop
  (:class:`guilomo.search.loop.SearchLoop`, what ``search.py`` runs) with the shipped
  settings (output expert signal, neighbour credits, routed probe, smoothed credit with
  parsimony, the price of a rank budget of half the search space, the per-step
  diagnostics), first or second order (virtual step, val pass, exact restore, two
  finite-difference passes, outer Adam, then the inner step);
- ``ref-1st`` / ``ref-2nd``: the same loop with the reference's settings (router-logit
  expert signal, the reference credit and probe, the raw credit, no budget, adapter
  dropout in the outer passes, outer lr 3e-3 constant).

The outer step is made on every step (no warm-up). Both stages compute the loss with the
same :class:`guilomo.objective.Objective` (sparse logits; every token has a label here, so
it equals the model's own loss). All variants are timed round-robin in one process,
``--steps`` steps per timing, median over ``--rounds`` rounds after 2 warm-up rounds;
ratios are medians of per-round ratios (paired, so a slow drift of the machine cancels).
The process CPU share (CPU time / wall time) during the timed window is printed: below
0.9 another job took the core and the run is ``contended``; it is retried up to
``--retries`` times.

Targets (issue 25): search-1st <= 2.2x the fine-tune step and <= 1.25x ref-1st;
search-2nd <= 5.2x the fine-tune step.

    .venv/bin/python benchmarks/bench_search.py [--hidden 256] [--layers 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from guilomo.allocation import uniform
from guilomo.budget import Budget
from guilomo.moe import LoraMoEConfig, find_targets, inject_adapter
from guilomo.objective import Objective
from guilomo.search import SearchSettings, inject_search_adapter
from guilomo.search.loop import SearchLoop

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS_FIRST = 2.2
TARGETS_SECOND = 5.2
TARGET_VS_REFERENCE = 1.25
# the reference's search (method.md section 2), beside the shipped defaults
REFERENCE = dict(
    expert_signal="logits",
    expert_credit="reference",
    rank_credit="reference",
    probe="constant",
    smooth_credit=False,
    parsimony_expert=0.0,
    parsimony_rank=0.0,
    outer_dropout=True,
    outer={"lr": 3e-3, "schedule": "constant"},
)


def toy_llama(hidden: int, layers: int, vocab: int, seed: int = 0) -> LlamaForCausalLM:
    heads = max(1, hidden // 64)
    kv = next(k for k in range(max(1, heads // 3), 0, -1) if heads % k == 0)  # GQA like SmolLM2
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def make_batch(batch: int, seq: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class Finetune:
    def __init__(self, args):
        self.model = toy_llama(args.hidden, args.layers, args.vocab)
        names = list(find_targets(self.model, TARGETS))
        self.cfg = LoraMoEConfig()
        inject_adapter(self.model, uniform(names, args.n_max, args.r_max, 2), self.cfg)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=3e-4)
        self.objective = Objective(self.model, self.cfg.aux_coef, self.cfg.aux_reduction)

    def step(self, train, val):
        self.opt.zero_grad(set_to_none=True)
        loss = self.objective(train)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()


class Search:
    """One real step of the product's search loop, as ``search.py`` runs it."""

    def __init__(self, args, order: str, reference: bool = False):
        self.model = toy_llama(args.hidden, args.layers, args.vocab)
        names = list(find_targets(self.model, TARGETS))
        extra = REFERENCE if reference else {}
        settings = SearchSettings(
            n_max=args.n_max, r_max=args.r_max, order=order, warmup_outer_fraction=0.0, **extra
        )
        inject_search_adapter(self.model, names, settings)
        self.model.train()
        cfg = LoraMoEConfig()
        budget = None if reference else Budget("rank", len(names) * args.n_max * args.r_max // 2)
        objective = Objective(self.model, cfg.aux_coef, cfg.aux_reduction)
        self.loop = SearchLoop(self.model, settings, objective, budget=budget)
        self.loop.configure(total_steps=10**6)  # the learning rates stay near their peak
        self.steps = 0

    def step(self, train, val):
        self.loop.step(train, val, self.steps)
        self.steps += 1


def measure(args) -> tuple[dict[str, list[float]], float]:
    variants = {
        "finetune": Finetune(args),
        "search-1st": Search(args, "first"),
        "search-2nd": Search(args, "second"),
        "ref-1st": Search(args, "first", reference=True),
        "ref-2nd": Search(args, "second", reference=True),
    }
    train = make_batch(args.batch, args.seq, args.vocab, 1)
    val = make_batch(args.batch, args.seq, args.vocab, 2)
    times: dict[str, list[float]] = {k: [] for k in variants}
    wall = cpu = 0.0
    for rnd in range(args.rounds + 2):
        for name, v in variants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(args.steps):
                v.step(train, val)
            t1, c1 = time.perf_counter(), time.process_time()
            if rnd >= 2:
                times[name].append((t1 - t0) / args.steps)
                wall += t1 - t0
                cpu += c1 - c0
    return times, cpu / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--n-max", type=int, default=8)
    ap.add_argument("--r-max", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--retries", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)

    for attempt in range(args.retries + 1):
        times, share = measure(args)
        contended = share < 0.9
        if not contended:
            break
        print(f"attempt {attempt + 1}: CPU share {share:.2f} < 0.9 (contended), retrying")

    print(
        f"toy LLaMA hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
        f"batch {args.batch} x {args.seq} tokens; n_max {args.n_max}, r_max {args.r_max}; "
        f"1 thread, {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'variant':<12} {'median ms':>10} {'x finetune':>11} {'x ref':>6} {'target':>14}")
    targets = {"search-1st": TARGETS_FIRST, "search-2nd": TARGETS_SECOND}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    for name, ts in times.items():
        vs_ft = ratio(name, "finetune")
        ref = {"search-1st": "ref-1st", "search-2nd": "ref-2nd"}.get(name)
        vs_ref = ratio(name, ref) if ref else None
        mark = ""
        if name in targets:
            ok = vs_ft <= targets[name]
            if name == "search-1st":
                ok = ok and vs_ref <= TARGET_VS_REFERENCE
                mark = f"<={targets[name]}, <={TARGET_VS_REFERENCE}"
            else:
                mark = f"<={targets[name]}"
            mark += " ok" if ok else " MISS"
        ref_cell = "" if vs_ref is None else f"{vs_ref:.2f}"
        print(
            f"{name:<12} {1e3 * statistics.median(ts):>10.1f} {vs_ft:>11.2f} "
            f"{ref_cell:>6} {mark:>14}"
        )
    print(
        f"CPU share {share:.2f}" + (" (contended: rerun on a quieter machine)" if contended else "")
    )


if __name__ == "__main__":
    main()
