"""Builders shared by the tests: a tiny random LLaMA, random heterogeneous allocations,
adapters with non-trivial weights, saved adapter folders; the repo root, the environment
of tests that start ``train.py`` / ``search.py`` as processes and the overrides that make
such a run take seconds (:func:`fast`)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaForCausalLM

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.backbone import load_backbone, tiny_model
from guilomo.moe import LoraMoEConfig, LoraMoELinear, adapter_modules, inject_adapter, save_adapter
from guilomo.moe.provenance import backbone_record

ROOT = Path(__file__).resolve().parents[1]
# offline, one thread per process (two of them share the 2 cores), tests/ importable
SUBPROCESS_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    "OMP_NUM_THREADS": "1",
}

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB = 97

# the default callbacks without progress bar and LR monitor: the model checkpoint alone
CHECKPOINTS = ["callbacks=default", "~callbacks.rich_progress_bar", "~callbacks.lr_monitor"]


def fast(
    steps: int = 2,
    examples: int = 16,
    *,
    batch: int | None = 4,
    logger: bool = False,
    callbacks: str | None = "none",
) -> list[str]:
    """Hydra overrides of a train.py / search.py run of seconds, for every test that runs
    one: the tiny backbone, no progress bar, ``steps`` optimizer steps on the first
    ``examples`` training examples in batches of ``batch`` (``None``: the task's batch).
    ``logger=False`` sets ``logger=none`` (``True`` keeps the config's logger);
    ``callbacks`` is ``"none"``, ``"checkpoints"`` (:data:`CHECKPOINTS`) or ``None`` (the
    config's). A test appends what it is about (later overrides win)."""
    out = ["backbone=tiny_llama"]
    if not logger:
        out.append("logger=none")
    out += {"none": ["callbacks=none"], "checkpoints": CHECKPOINTS, None: []}[callbacks]
    out += [
        "trainer.enable_progress_bar=false",
        f"trainer.max_steps={steps}",
        f"task.datamodule.max_train_examples={examples}",
    ]
    if batch is not None:
        out.append(f"task.datamodule.batch_size={batch}")
    return out


def tiny_llama(seed: int = 0, **config) -> LlamaForCausalLM:
    """The tests' random LLaMA, built by the product's ``tiny`` source without a tokenizer
    (:func:`guilomo.backbone.tiny_model`): its 2 layers, hidden 64, intermediate 128, 4
    heads and 2 kv heads, with a 97-token vocabulary, 64 positions, untied embeddings and
    eager attention; ``config`` overrides any ``LlamaConfig`` value. fp32, eval."""
    small = {
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
        "attn_implementation": "eager",
    }
    return tiny_model({**small, **config, "seed": seed}).eval()


def linear_names(model: nn.Module) -> list[str]:
    """Full paths of the targeted linear layers of ``model``, in module order."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.split(".")[-1] in TARGETS
    ]


def random_allocation(
    names: list[str], seed: int = 0, max_experts: int = 8, max_rank: int = 8, top_k: int = 2, **meta
) -> Allocation:
    """Random expert counts (1..max_experts) and ranks (1..max_rank) per module."""
    rng = random.Random(seed)
    modules = {}
    for n in names:
        e = rng.randint(1, max_experts)
        modules[n] = ModuleAllocation(tuple(rng.randint(1, max_rank) for _ in range(e)))
    return Allocation(modules, top_k=top_k, meta=dict(meta))


@torch.no_grad()
def randomize_adapter(model_or_layer: nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Give every adapter a nonzero B (and perturb A and the router) so the delta matters."""
    g = torch.Generator().manual_seed(seed)
    layers = (
        [model_or_layer]
        if isinstance(model_or_layer, LoraMoELinear)
        else list(adapter_modules(model_or_layer).values())
    )
    for m in layers:
        m.lora_B.copy_(std * torch.randn(m.lora_B.shape, generator=g))
        m.lora_A.add_(0.1 * torch.randn(m.lora_A.shape, generator=g))
        if m.router is not None:
            m.router.copy_(torch.randn(m.router.shape, generator=g))


def input_ids(batch: int = 2, seq: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=g)


TINY = {"name": "tiny-llama", "source": "tiny", "tiny": {"seed": 0}}
TASK = {"id": "chatterbot_topic", "template": "alpaca", "instruction": "Which topic is it?"}


def base(seed: int = 0):
    return load_backbone("tiny-llama", source="tiny", tiny={"seed": seed})


def mixed(names: list[str], top_k_all: bool = False) -> dict[str, ModuleAllocation]:
    """Every third module one expert (ranks 1..4), the others 2-3 experts."""
    out = {}
    for i, n in enumerate(names):
        ranks = (1 + i % 4,) if i % 3 == 0 else tuple(1 + (i + j) % 4 for j in range(2 + i % 2))
        out[n] = ModuleAllocation(ranks, top_k=len(ranks) if top_k_all else None)
    return out


def single(names: list[str]) -> dict[str, ModuleAllocation]:
    return {n: ModuleAllocation((1 + i % 4,)) for i, n in enumerate(names)}


def make(path, kind=mixed, config=None, seed=1, zero_router=False, **kw):
    """A saved adapter on the tiny backbone; returns the in-memory model (eval) and tokenizer."""
    model, tok = base()
    alloc = Allocation(kind(linear_names(model), **kw), top_k=2, meta={"backbone": "tiny_llama"})
    config = config or LoraMoEConfig(alpha=12.0)
    with torch.random.fork_rng(devices=[]):  # the init of A draws from the global RNG
        torch.manual_seed(seed)
        inject_adapter(model, alloc, config)
    # B of the scale of the base weights: a larger one makes a badly conditioned model
    # whose fp32 rounding alone moves logits by more than the 1e-5 the checks allow
    randomize_adapter(model, seed=seed, std=0.05)
    if zero_router:
        for m in adapter_modules(model).values():
            if m.router is not None:
                m.router.data.zero_()
    record = backbone_record(TINY, "tiny_llama", model)
    save_adapter(model, path, alloc, config, backbone=record, tokenizer=tok, task=TASK)
    return model.eval(), tok


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> its kind and content hash (files), target (links)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link:{os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def loader_must_not_run(**kwargs):
    """A ``backbone.loader._target_`` for tests: loading the backbone is a test failure."""
    raise AssertionError("the backbone was loaded before the bad input was caught")


class PoisonAt:
    """A Lightning callback for tests (``+callbacks.poison._target_=helpers.PoisonAt``): at
    the start of step ``at_step`` (0-based ``global_step``) it fills one trained tensor with
    NaN, so that step's loss is NaN."""

    def __new__(cls, at_step: int):
        import lightning as L

        class _Poison(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, *args):
                if trainer.global_step == at_step:
                    p = next(p for n, p in pl_module.named_parameters() if "lora_A" in n)
                    with torch.no_grad():
                        p.fill_(float("nan"))

        return _Poison()


class KillAt:
    """A Lightning callback for tests (``+callbacks.kill._target_=helpers.KillAt``): SIGKILLs
    its own process at the start of step ``at_step``, like a node failure (nothing runs
    after it: no exception handler, no teardown)."""

    def __new__(cls, at_step: int):
        import os
        import signal

        import lightning as L

        class _Kill(L.Callback):
            def on_train_batch_start(self, trainer, *args):
                if trainer.global_step == at_step:
                    os.kill(os.getpid(), signal.SIGKILL)

        return _Kill()
