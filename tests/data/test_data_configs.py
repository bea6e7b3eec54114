"""Every conf/task/*.yaml builds a TaskDataModule with hydra.utils.instantiate (no data loaded).

Task files extend conf/base/task.yaml through their defaults list, so they are
composed with Hydra (as the entry points do), not read with ``OmegaConf.load``.
"""

import pytest
from compose import compose_cfg, options
from hydra.utils import instantiate
from omegaconf import OmegaConf

from guilomo.data import TASKS, TaskDataModule

NAMES = options("task")


def task_cfg(name: str, seed: int | None = None):
    """``{"seed": seed, "task": <conf/task/name.yaml composed>}`` (no seed key if None)."""
    task = OmegaConf.to_container(compose_cfg("train", [f"task={name}"]).task)  # unresolved
    return OmegaConf.create({"task": task} if seed is None else {"seed": seed, "task": task})


def test_every_task_has_a_config():
    assert set(NAMES) >= {
        "chatterbot_topic", "chatterbot_qa", "bigbench_multiemo", "bigbench_social_iqa",
        "bigbench_strategyqa", "scienceqa", "commonsense_qa", "openbookqa", "glue_cola",
        "glue_mrpc", "glue_rte", "gsm8k",
    }  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_config_instantiates(tokenizer, name):
    root = task_cfg(name, seed=123)
    assert root.task.id == name
    dm = instantiate(root.task.datamodule, tokenizer=tokenizer)
    assert isinstance(dm, TaskDataModule)
    assert dm.spec is TASKS[root.task.datamodule.task]
    assert dm.seed == 123 and isinstance(dm.task_kwargs, dict)
    assert task_cfg(name).task.datamodule.seed == 0


def test_default_config_sets_up(tokenizer):
    cfg = task_cfg("chatterbot_topic")
    dm = instantiate(cfg.task.datamodule, tokenizer=tokenizer)
    dm.setup()
    assert len(dm.train_examples) + len(dm.val_examples) + len(dm.test_examples) == 601
