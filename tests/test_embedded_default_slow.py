"""On the embedded default (real SmolLM2 + ChatterBot topics), fine-tuning beats zero-shot.

Slow (a few minutes on 2 cores): run with ``make test-all`` or ``pytest -m slow``.
"""

import json

import pytest
from compose import compose_cfg

from guilomo.allocation import Allocation
from guilomo.finetune.run import run_train
from guilomo.search.run import run_search


@pytest.mark.slow
def test_search_then_finetune_beats_zero_shot(tmp_path):
    search_cfg = compose_cfg(
        "search",
        [
            "experiment=demo_search",
            "trainer.max_steps=6",
            "logger=none",
            "callbacks=none",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "search",
    )
    path = run_search(search_cfg)
    alloc = Allocation.load(path)
    # the seven LLaMA linear modules of every adapted decoder layer
    assert alloc.meta["backbone"] == "smollm2_135m"
    assert len(alloc.modules) == 7 * len(search_cfg.layers)
    # the demo's budget is inside the search: the allocation spends it, within one unit
    # (one rank row of the widest module, 576 + 1536 parameters)
    assert alloc.meta["budget_fit"]["mode"] == "lagrangian"
    value = search_cfg.budget.value
    assert value - (576 + 1536) <= alloc.meta["budget_spent"] <= value
    train_cfg = compose_cfg(
        "train",
        [
            "experiment=demo_train",
            "allocation=file",
            f"allocation.path={path}",
            "logger=none",
            "callbacks=none",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "train",
    )
    result = run_train(train_cfg)
    saved = json.loads((tmp_path / "train" / "metrics.json").read_text())
    zero, tuned = (
        saved["metrics"]["zero_shot"]["accuracy"],
        saved["metrics"]["finetuned"]["accuracy"],
    )
    assert saved["metrics"]["finetuned"]["n"] == 120
    assert tuned > zero + 0.3, (zero, tuned)
    assert result["trainable_params"] == alloc.trainable_params(
        {n: s for n, s in _shapes(alloc).items()}
    )


def _shapes(alloc):
    from guilomo.backbone import load_backbone
    from guilomo.moe import find_targets, module_shapes

    model, _ = load_backbone("HuggingFaceTB/SmolLM2-135M-Instruct", source="smollm2_gguf")
    return module_shapes({n: m for n, m in find_targets(model, list(alloc.modules)).items()})
