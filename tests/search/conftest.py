"""The search tests run tiny models: one intra-op thread is faster for them, and on a
shared, loaded 2-core machine two spinning OpenMP threads can make each tiny op ~10x
slower (measured: 10 s vs 0.8 s for six search steps of the tiny LLaMA)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
