"""Every global RNG state (torch CPU and CUDA, Python, numpy) as checkpoint-safe values.

A run resumed from a checkpoint restores these states as they were when the checkpoint
was written, so dropout masks and any other draws continue as in an uninterrupted run.
numpy's key array is stored as a tensor: Lightning checkpoints load with
``weights_only``.

Under data parallelism the processes' states differ (each draws dropout masks for its
own batch shapes), so a checkpoint holds one state per process:
:func:`gather_rng_states` collects them with Lightning's ``all_gather`` (every process
calls it while saving; rank zero writes the file) and :func:`restore_rng_states` gives
each process its own back.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].clone())
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tensors(state: dict) -> dict[str, torch.Tensor]:
    version, py_keys, gauss = state["python"]
    _, np_keys, pos, has_gauss, cached = state["numpy"]
    out = {
        "torch": state["torch"],
        "python": torch.tensor([version, *py_keys], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy": np_keys,
        "numpy_rest": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
    }
    if "cuda" in state:
        out["cuda"] = torch.stack(state["cuda"])
    return out


def _from_tensors(t: dict[str, torch.Tensor]) -> dict:
    # copies: a row of a gathered (world, n) tensor has a storage offset, which
    # torch.set_rng_state does not take into account (it crashed, torch 2.13)
    version, *py_keys = t["python"].tolist()
    has, gauss = t["python_gauss"].tolist()
    pos, has_gauss, cached = t["numpy_rest"].tolist()
    state = {
        "torch": t["torch"].cpu().clone(),
        "python": (int(version), tuple(py_keys), gauss if has else None),
        "numpy": ("MT19937", t["numpy"].cpu().clone(), int(pos), int(has_gauss), cached),
    }
    if "cuda" in t:
        state["cuda"] = [c.cpu().clone() for c in t["cuda"]]
    return state


def gather_rng_states(module) -> list[dict]:
    """Every process's :func:`rng_state`, in rank order (call it on every process)."""
    state = rng_state()
    _, world = process_position(module)
    if world < 2:
        return [state]
    gathered = module.all_gather(_to_tensors(state))  # each (world, ...)
    return [_from_tensors({k: v[r] for k, v in gathered.items()}) for r in range(world)]


def process_position(module) -> tuple[int, int]:
    """``(rank, world_size)`` of the module's trainer; ``(0, 1)`` when it has none."""
    trainer = getattr(module, "_trainer", None)
    return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)


def restore_rng_states(states: list[dict] | dict, rank: int = 0, world_size: int = 1) -> None:
    """Set this process's state from :func:`gather_rng_states` (or one :func:`rng_state`)."""
    states = [states] if isinstance(states, dict) else list(states)
    if len(states) != world_size:
        rank_zero_warn(
            f"the checkpoint holds the RNG states of {len(states)} process(es), this run has "
            f"{world_size}: it continues, but not exactly as the run that wrote it would have "
            "(resume on as many devices for that)"
        )
    set_rng_state(states[rank % len(states)])
