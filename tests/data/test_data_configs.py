"""Every conf/task/*.yaml builds a TaskDataModule with hydra.utils.instantiate (no data loaded)."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from guilomo.data import TASKS, TaskDataModule

CONF = Path(__file__).resolve().parents[2] / "conf" / "task"
NAMES = sorted(p.stem for p in CONF.glob("*.yaml"))


def test_every_task_has_a_config():
    assert set(NAMES) >= {
        "chatterbot_topic", "chatterbot_qa", "bigbench_multiemo", "bigbench_social_iqa",
        "bigbench_strategyqa", "scienceqa", "commonsense_qa", "openbookqa", "glue_cola",
        "glue_mrpc", "glue_rte", "gsm8k",
    }  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_config_instantiates(tokenizer, name):
    root = OmegaConf.create({"seed": 123, "task": OmegaConf.load(CONF / f"{name}.yaml")})
    assert root.task.id == name
    dm = instantiate(root.task.datamodule, tokenizer=tokenizer)
    assert isinstance(dm, TaskDataModule)
    assert dm.spec is TASKS[root.task.datamodule.task]
    assert dm.seed == 123 and isinstance(dm.task_kwargs, dict)
    assert (
        OmegaConf.create({"task": OmegaConf.load(CONF / f"{name}.yaml")}).task.datamodule.seed == 0
    )


def test_default_config_sets_up(tokenizer):
    cfg = OmegaConf.load(CONF / "chatterbot_topic.yaml")
    dm = instantiate(cfg.datamodule, tokenizer=tokenizer)
    dm.setup()
    assert len(dm.train_examples) + len(dm.val_examples) + len(dm.test_examples) == 601
