"""The in-process halves of the 2-process tests run tiny models: one intra-op thread
(as in tests/search; the launched processes get one each from Lightning)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
