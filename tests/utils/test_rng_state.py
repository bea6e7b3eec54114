"""RNG states per process (what checkpoints hold): restoring one from a row of a
gathered (world, n) stack, as ``gather_rng_states`` builds it under DDP, continues the
torch, Python and numpy streams exactly (a row is a view with a storage offset)."""

import random

import numpy as np
import torch

from guilomo.utils.rng import _from_tensors, _to_tensors, restore_rng_states, rng_state


def _draw():
    return torch.rand(3).tolist(), random.random(), random.gauss(0, 1), np.random.rand(2).tolist()


def test_rng_state_round_trip_from_a_gathered_row():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    first = _to_tensors(rng_state())
    _draw()
    second = _to_tensors(rng_state())
    expected = _draw()
    gathered = {k: torch.stack([first[k], second[k]]) for k in first}
    states = [_from_tensors({k: v[r] for k, v in gathered.items()}) for r in range(2)]
    restore_rng_states(states, rank=1, world_size=2)
    assert _draw() == expected
    restore_rng_states(states, rank=0, world_size=2)
    assert _draw() != expected
