"""Every config group composes with the real conf/ tree, and its objects instantiate."""

import hydra
import pytest
from compose import compose_cfg, options
from lightning.pytorch import Trainer
from omegaconf import OmegaConf

from guilomo.baselines import uniform_moe
from guilomo.budget import Budget
from guilomo.finetune.allocation import resolve_allocation
from guilomo.moe import LoraMoEConfig
from guilomo.pipeline import (
    build_backbone,
    build_budget,
    build_datamodule,
    build_lora_config,
    build_targets,
    build_trainer,
)

HUB_BACKBONES = {"llama2_7b", "mistral_7b", "llama3_8b"}


@pytest.fixture(scope="module")
def tiny():
    cfg = compose_cfg("train", ["backbone=tiny_llama"])
    return build_backbone(cfg)


@pytest.mark.parametrize("entry", ["train", "search"])
@pytest.mark.parametrize("backbone", options("backbone"))
def test_backbones_compose(entry, backbone):
    cfg = compose_cfg(entry, [f"backbone={backbone}"])
    assert cfg.backbone.id == backbone
    assert cfg.backbone.loader._target_ == "guilomo.backbone.load_backbone"
    assert list(cfg.backbone.target_modules)
    if backbone in HUB_BACKBONES:
        assert cfg.backbone.loader.source == "hub" and "/" in cfg.backbone.loader.name


def test_tiny_backbone_instantiates(tiny):
    model, tok = tiny
    assert model.config.num_hidden_layers == 2 and tok.eos_token


@pytest.mark.parametrize("task", options("task"))
def test_tasks_instantiate(task, tiny, tmp_path):
    cfg = compose_cfg("train", [f"task={task}"], tmp_path)
    dm = build_datamodule(cfg, tiny[1])
    assert cfg.task.id == task and dm.spec.name == cfg.task.datamodule.task
    assert dm.seed == cfg.seed  # the task follows the run's seed


@pytest.mark.parametrize("allocation", [a for a in options("allocation") if a != "file"])
def test_allocations_instantiate(allocation, tiny, tmp_path):
    cfg = compose_cfg("train", ["backbone=tiny_llama", f"allocation={allocation}"], tmp_path)
    if allocation == "random":
        cfg = compose_cfg(
            "train",
            ["backbone=tiny_llama", "allocation=random", "budget=experts", "budget.value=50"],
            tmp_path,
        )
    if allocation == "concentrated":  # a params or rank budget and a kind (or a searched file)
        over = ["allocation.module_kind=k_proj", "budget=rank", "budget.value=50"]
        cfg = compose_cfg(
            "train", ["backbone=tiny_llama", "allocation=concentrated", *over], tmp_path
        )
    if allocation == "concentrated_low":  # a params or rank budget
        over = ["budget=rank", "budget.value=50"]
        cfg = compose_cfg(
            "train", ["backbone=tiny_llama", f"allocation={allocation}", *over], tmp_path
        )
    if allocation in ("shuffled", "inverted"):  # placements of a searched file
        searched = uniform_moe(build_targets(cfg, tiny[0]), 2, 2).save(tmp_path / "searched.json")
        over = [f"searched={searched}"]
        cfg = compose_cfg(
            "train", ["backbone=tiny_llama", f"allocation={allocation}", *over], tmp_path
        )
    targets = build_targets(cfg, tiny[0])
    alloc = resolve_allocation(cfg, targets, 2)
    assert set(alloc.modules) == set(targets)
    assert alloc.meta["backbone"] == "tiny_llama"


@pytest.mark.parametrize("budget", [b for b in options("budget") if b != "match"])
def test_budgets(budget):
    cfg = compose_cfg(
        "train", [f"budget={budget}", "budget.value=1000"] if budget != "none" else []
    )
    b = build_budget(cfg)
    assert isinstance(b, Budget) and b.kind == budget


def test_adapter_and_search_groups():
    cfg = compose_cfg("search", [])
    assert isinstance(build_lora_config(cfg), LoraMoEConfig)
    assert cfg.search.order in ("first", "second")


@pytest.mark.parametrize("logger", options("logger"))
@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_trainer_with_loggers_and_callbacks(logger, callbacks, tmp_path):
    cfg = compose_cfg("train", [f"logger={logger}", f"callbacks={callbacks}"], tmp_path)
    trainer = build_trainer(cfg)
    assert isinstance(trainer, Trainer)
    assert (trainer.logger is not None) == (logger != "none")


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainers_compose(trainer, tmp_path):
    cfg = compose_cfg("train", [f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if trainer in ("cpu", "ddp"):  # gpu / fsdp need an accelerator; DDP is checked on CPU
        cpu = (
            {"accelerator": "cpu", "devices": 2, "precision": "32-true"} if trainer == "ddp" else {}
        )
        t = hydra.utils.instantiate(cfg.trainer, **cpu)
        assert type(t.strategy).__name__ == (
            "DDPStrategy" if trainer == "ddp" else "SingleDeviceStrategy"
        )


@pytest.mark.parametrize("entry", ["train", "search"])
def test_debug_and_experiments_compose(entry, tmp_path):
    cfg = compose_cfg(entry, ["debug=fast"], tmp_path)
    assert cfg.trainer.max_steps <= 10
    for exp in options("experiment"):
        cfg = compose_cfg(entry, [f"experiment={exp}"], tmp_path)
        assert cfg.backbone.id


@pytest.mark.parametrize("group", ["task", "trainer"])
def test_group_options_extend_a_shared_base(group):
    """Each task / trainer file inherits the shared settings (conf/base/) instead of copying them."""
    import yaml
    from compose import CONF

    for name in options(group):
        spec = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
        parents = [d for d in spec.get("defaults", []) if d != "_self_"]
        assert parents, f"conf/{group}/{name}.yaml does not extend a base"
        assert "_target_" not in spec.get("datamodule", spec), f"{group}/{name} repeats _target_"


# Run 4's search variants, each run as overrides of its parent experiment, and each
# one's own settings checked beside the equality
RUN4_VARIANTS = {
    "positive_search_heard": (
        "positive_search",
        [
            "task.datamodule.eval_batch_size=64",
            "search.outer_every=2",
            "search.outer.lr=6e-2",
            "search.parsimony_expert=0",
            "search.parsimony_rank=0",
        ],
        {"search.parsimony_rank": 0, "task.datamodule.eval_batch_size": 64},
    ),
    "positive_search_bound": (
        "positive_search_heard",
        ["search.budget_lr=0.1"],
        {"search.budget_lr": 0.1, "search.outer.schedule": "linear"},
    ),
    # V10 ran as the bound search with the heard search's price step and a gain
    "positive_search_pi": (
        "positive_search_bound",
        ["search.budget_lr=0.3", "search.budget_gain=2"],
        {"search.budget_lr": 0.3, "search.budget_gain": 2.0, "search.outer_every": 2},
    ),
}


@pytest.mark.parametrize("name", sorted(RUN4_VARIANTS))
def test_run4_search_variant_is_its_parent_with_its_overrides(name, tmp_path):
    """docs/results.md Run 4 ran each variant as overrides of its parent; the experiment
    file must compose to exactly that configuration."""
    parent, variant, expected = RUN4_VARIANTS[name]
    named = compose_cfg("search", [f"experiment={name}", "seed=2"], tmp_path)
    spelled = compose_cfg("search", [f"experiment={parent}", "seed=2", *variant], tmp_path)
    assert OmegaConf.to_container(named) == OmegaConf.to_container(spelled)
    for key, value in expected.items():
        assert OmegaConf.select(named, key) == value, key
