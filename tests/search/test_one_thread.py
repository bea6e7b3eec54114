"""tests/conftest.py runs tests on one intra-op thread (tiny models), this folder's too."""

import torch


def test_search_tests_run_on_one_thread():
    assert torch.get_num_threads() == 1
