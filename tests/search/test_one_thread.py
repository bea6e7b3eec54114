"""tests/conftest.py runs this folder's tests on one intra-op thread (tiny models)."""

import torch


def test_search_tests_run_on_one_thread():
    assert torch.get_num_threads() == 1
