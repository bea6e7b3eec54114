"""Small fixture run folders laid out as train.py / search.py write them.

``write_metrics(folder, ...)`` writes one bare run (``metrics.json`` alone).
``make_runs(root)`` writes a multirun of fine-tune runs (``metrics.json``,
``allocation.json``, ``.hydra/config.yaml``), one search run, one fine-tune run that
died before writing ``metrics.json`` and one with a corrupt ``metrics.json``, and
returns the accuracies it wrote, keyed by ``(task, method)`` -> ``{seed: value}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from guilomo.allocation import Allocation, ModuleAllocation

TASKS = ("chatterbot_topic", "bigbench_multiemo")
METHODS = {  # method: (counts of the 4 modules, trainable params)
    "lora": ((1, 1, 1, 1), 4000),
    "mola_2468": ((2, 2, 8, 8), 3990),
    "guilomo": ((2, 5, 3, 8), 3995),
}
SEEDS = (1, 2, 3)
NAMES = [f"model.layers.{layer}.self_attn.{m}" for layer in (0, 1) for m in ("q_proj", "v_proj")]


def accuracy(task: str, method: str, seed: int) -> float:
    """A deterministic, distinct value per run (the test recomputes means from it)."""
    return round(
        0.3 + 0.1 * TASKS.index(task) + 0.05 * list(METHODS).index(method) + 0.01 * seed**2, 4
    )


def _allocation(method: str, task: str) -> Allocation:
    counts, _ = METHODS[method]
    meta = {"backbone": "tiny_llama", "num_layers": 2, "task": task}
    if method == "guilomo":
        meta.update(source="guilomo-search", search_seconds=12.5)
    else:
        meta["source"] = f"baseline:{method.split('_')[0]}"
        if method.startswith("mola"):
            meta["pattern"] = [2, 4, 6, 8]
    modules = {n: ModuleAllocation((4,) * c) for n, c in zip(NAMES, counts, strict=True)}
    return Allocation(modules, top_k=1 if method == "lora" else 2, meta=meta)


def write_metrics(
    folder: Path, method: str, seed: int, finetuned: dict, budget: dict, **fields
) -> None:
    """A bare fine-tune run: only ``metrics.json``, with what the results reader groups by
    (task ``t`` and backbone ``b`` unless ``fields`` say otherwise)."""
    folder.mkdir(parents=True)
    data = {"task": "t", "backbone": "b", "method": method, "seed": seed, **fields}
    data.update(budget=budget, metrics={"finetuned": finetuned})
    (folder / "metrics.json").write_text(json.dumps(data))


def write_run(folder: Path, task: str, method: str, seed: int, *, with_method: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    cfg = {"task_name": "train", "seed": seed, "task": {"id": task}, "allocation": {"kind": "x"}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    alloc = _allocation(method, task)
    alloc.save(folder / "allocation.json")
    acc = accuracy(task, method, seed)
    _, params = METHODS[method]
    metrics = {
        "task": task,
        "backbone": "tiny_llama",
        "allocation": {
            "kind": "file" if method == "guilomo" else method,
            "source": alloc.meta["source"],
        },
        "trainable_params": params,
        "budget": {"kind": "params", "value": 4000, "spent": params},
        "search": {"seconds": 12.5, "steps": 10, "meta": alloc.meta}
        if method == "guilomo"
        else None,
        "seed": seed,
        "metrics": {
            "zero_shot": {"accuracy": 0.1 + 0.01 * seed + 0.1 * TASKS.index(task), "n": 8},
            "finetuned": {"accuracy": acc, "n": 8},
        },
    }
    if with_method:
        metrics["method"] = method
    (folder / "metrics.json").write_text(json.dumps(metrics))


def make_runs(root: Path) -> dict:
    values: dict = {}
    job = 0
    for task in TASKS:
        for method in METHODS:
            for seed in SEEDS:
                # one old-style metrics.json without "method": named from its allocation.json
                old = (task, method, seed) == ("chatterbot_topic", "mola_2468", 2)
                write_run(root / "multirun" / str(job), task, method, seed, with_method=not old)
                values.setdefault((task, method), {})[seed] = accuracy(task, method, seed)
                job += 1
    # a search run: its metrics.json (stage "search") is not a row of the table
    search = root / "search_run"
    (search / ".hydra").mkdir(parents=True)
    (search / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"task_name": "search", "search": {}})
    )
    _allocation("guilomo", TASKS[0]).save(search / "allocation.json")
    (search / "metrics.json").write_text(
        json.dumps({"stage": "search", "method": "guilomo", "task": TASKS[0], "scalars": {}})
    )
    # a fine-tune run that died before metrics.json
    dead = root / "multirun" / "dead"
    (dead / ".hydra").mkdir(parents=True)
    (dead / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"allocation": {"kind": "lora"}}))
    # a corrupt (truncated) metrics.json
    bad = root / "multirun" / "corrupt"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text('{"task": "chatterbot_topic", "metr')
    return values
