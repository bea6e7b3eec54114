"""Logging of everything a comparison needs, in-process: loggers, identity, task wrapper,
router usage, progress bar description, console handlers."""

import csv
import logging
import math
from pathlib import Path

import pytest
import torch
from compose import compose_cfg
from helpers import fast
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util.tensor_util import make_ndarray
from wandb_records import find_runs

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.allocation_view import log_allocation, save_heatmap
from guilomo.finetune.run import run_train
from guilomo.finetune.usage import RouterUsage
from guilomo.utils.loggers import log_final, run_identity, with_identity
from guilomo.utils.progress import StepProgressBar
from guilomo.utils.task import metric_value, task_wrapper, tidy_console_logging

FAST = [
    *fast(logger=True),
    "task.datamodule.val_size=8",
    "eval.limit=8",
    "save_adapter=false",
]


def tb_tags(folder: Path) -> dict[str, list]:
    """``{tag: [(step, value or None), ...]}`` over every event file in ``folder``."""
    out: dict[str, list] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                if v.WhichOneof("value") == "simple_value":
                    value = v.simple_value
                elif v.metadata.plugin_data.plugin_name == "scalars":
                    value = float(make_ndarray(v.tensor))
                else:
                    value = None
                out.setdefault(v.tag, []).append((event.step, value))
    return out


def alloc():
    return Allocation(
        {
            "model.layers.0.self_attn.q_proj": ModuleAllocation((8, 4)),
            "model.layers.1.mlp.up_proj": ModuleAllocation((2, 2, 2)),
        }
    )


# -- identity ---------------------------------------------------------------------------
def test_identity_names_every_field_and_groups_seeds():
    a = run_identity("train", "mola_2468", "tiny", "topic", {"kind": "params", "value": 9}, 1)
    b = run_identity("train", "mola_2468", "tiny", "topic", {"kind": "params", "value": 9}, 2)
    assert a.name == "train-mola_2468-tiny-topic-params=9-s1" and a.group == b.group
    assert a.name != b.name and "seed:1" in a.tags and "budget:params=9" in a.tags
    c = run_identity("search", "guilomo", "tiny", "topic", None, 1, variant="second_order")
    assert c.name == "search-guilomo-second_order-tiny-topic-none-s1"


def test_identity_fills_only_what_the_logger_config_leaves_null():
    cfg = OmegaConf.create(
        {
            "wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "name": "mine"},
            "csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "name": "csv"},
        }
    )
    for key in ("group", "tags"):
        cfg.wandb[key] = None
    ident = run_identity("train", "lora", "tiny", "topic", None, 3)
    out = with_identity(cfg, ident)
    assert out.wandb.name == "mine" and out.wandb.group == ident.group
    assert list(out.wandb.tags) == ident.tags and out.csv.name == "csv"
    assert cfg.wandb.group is None  # the composed config is not modified


# -- tables, images, final metrics in CSV and TensorBoard --------------------------------
def test_allocation_and_results_reach_csv_and_tensorboard(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=False)
    cv = CSVLogger(tmp_path, name="csv", version="")
    image = save_heatmap(alloc(), tmp_path / "h.png")
    log_allocation([tb, cv], alloc(), image, step=0)
    log_final([tb, cv], {"seed": 1, "optim": {"lr": 0.1}, "layers": None}, {"test/a": 0.25}, 7)
    tb.experiment.flush()

    rows = list(csv.reader((tmp_path / "csv" / "allocation_table.csv").open()))
    assert rows[0] == ["module", "layer", "kind", "experts", "ranks", "total_rank"]
    assert rows[1] == ["model.layers.0.self_attn.q_proj", "0", "q_proj", "2", "8 4", "12"]
    assert rows[2][3:] == ["3", "2 2 2", "6"]
    metrics = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert metrics[-1]["test/a"] == "0.25" and metrics[-1]["step"] == "7"

    tags = tb_tags(tmp_path / "tb")
    assert "allocation/heatmap" in tags and "allocation/table/text_summary" in tags
    assert tags["test/a"] == [(7, 0.25)]  # logged once, at the final step
    assert "_hparams_/experiment" in tags and "_hparams_/session_start_info" in tags


# -- the wrapper --------------------------------------------------------------------------
def _started_run(tmp_path, name):
    import wandb

    return wandb.init(project="t", name=name, dir=str(tmp_path), mode="offline")


def test_task_wrapper_finishes_runs_records_errors_and_reraises(tmp_path, caplog):
    import wandb

    @task_wrapper
    def good(cfg):
        _started_run(tmp_path / "good", "good").log({"x": 1})
        return "done"

    @task_wrapper
    def bad(cfg):
        _started_run(tmp_path / "bad", "bad")
        raise ValueError("broken input")

    assert good(None) == "done" and wandb.run is None
    with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="broken input"):
        bad(None)
    assert wandb.run is None
    assert "broken input" in caplog.text and "Traceback" in caplog.text
    wandb.teardown()  # offline files are complete once the W&B service has stopped
    (g,) = find_runs(tmp_path / "good")
    (b,) = find_runs(tmp_path / "bad")
    assert g.exit_code == 0 and b.exit_code == 1
    assert b.summary["error/type"] == "ValueError" and b.summary["error/message"] == "broken input"


def test_task_wrapper_leaves_a_callers_run_open(tmp_path):
    outer = _started_run(tmp_path, "caller")
    try:
        task_wrapper(lambda cfg: None)(None)
        import wandb

        assert wandb.run is outer  # e.g. a W&B sweep agent's run
    finally:
        outer.finish()


@pytest.mark.parametrize(
    "entry, choice, metric",
    [("train", "train_lr", "val/lm_loss"), ("search", "search_lr", "val/final_loss")],
)
def test_hparams_search_configs_sweep_real_keys(entry, choice, metric):
    from compose import CONF
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(entry, [f"hparams_search={choice}"], return_hydra_config=True)
    assert cfg.optimized_metric == metric  # a name the run's "scalars" hold (tests of the runs)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "minimize"
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


def test_metric_value_names_the_choices():
    assert metric_value({"val/lm_loss": 2}, "val/lm_loss") == 2.0
    assert metric_value({"a": 1}, None) is None
    with pytest.raises(KeyError, match="among this run's metrics.*'a'"):
        metric_value({"a": 1}, "val/loss")


# -- console ------------------------------------------------------------------------------
def test_each_lightning_line_once_when_hydra_handles_logging():
    import lightning  # noqa: F401  (adds its own console handler)

    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    root = logging.getLogger()
    catch = Catch()
    root.addHandler(catch)
    try:
        tidy_console_logging()
        lit = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        lit.info("GPU available: False")
        lit.info("💡 Tip: try our hosted logger")
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            plain = [
                h for h in logging.getLogger(name).handlers if type(h) is logging.StreamHandler
            ]
            assert not plain, name
    finally:
        root.removeHandler(catch)
    assert records == ["GPU available: False"]


def test_progress_bar_has_no_negative_epoch_count():
    bar = StepProgressBar()
    trainer = Trainer(max_steps=5, callbacks=[bar], logger=False, enable_checkpointing=False)
    bar.setup(trainer, None, "fit")
    text = bar._get_train_description(0).strip()
    assert text == "Epoch 0 (max_steps=5)" and "-" not in text
    trainer = Trainer(max_epochs=3, callbacks=[bar], logger=False, enable_checkpointing=False)
    bar.setup(trainer, None, "fit")
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


# -- router usage -------------------------------------------------------------------------
def test_router_usage_arithmetic():
    usage = RouterUsage()
    usage.shares = {
        "model.layers.0.self_attn.q_proj": torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64),
        "model.layers.1.mlp.up_proj": torch.tensor([0.25] * 4, dtype=torch.float64),
    }
    usage._ranks = {n: [8, 8, 4, 2] for n in usage.shares}
    s = usage.scalars()
    assert s["router/L0.q_proj/max_share"] == 0.5
    assert s["router/L0.q_proj/balance"] == pytest.approx(math.log(2) / math.log(4))
    assert s["router/L1.up_proj/balance"] == pytest.approx(1.0)
    assert usage.rows()[2] == ["model.layers.0.self_attn.q_proj", 0, "q_proj", 2, 4, 0.0]


def test_router_usage_counts_top_k_of_non_padding_tokens(tiny_model_and_tokenizer):
    """Each real token adds top_k assignments; padding adds none (same counts padded or not)."""
    from guilomo.finetune.module import FinetuneModule
    from guilomo.moe import LoraMoEConfig, find_targets, inject_adapter

    model, _ = tiny_model_and_tokenizer
    names = list(find_targets(model, ["q_proj", "down_proj"]))
    allocation = Allocation({n: ModuleAllocation((2, 2, 2)) for n in names}, top_k=2)
    inject_adapter(model, allocation, LoraMoEConfig())
    module = FinetuneModule(model)
    ids = torch.randint(0, 1000, (2, 6))

    def measure(batch):
        usage = RouterUsage()
        usage.on_validation_epoch_start(None, module)
        with torch.no_grad():
            model(**batch)
        counts = dict(usage._counts)
        usage._remove_hooks()
        return counts

    plain = measure({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    padded_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros(2, 3, dtype=torch.long)], 1)
    padded = measure({"input_ids": padded_ids, "attention_mask": mask})
    assert set(plain) == set(names)
    for n in names:
        assert int(plain[n].sum()) == 2 * 12  # top-2 of 12 real tokens
        assert torch.equal(plain[n], padded[n])


# -- a whole run ------------------------------------------------------------------------------
def test_train_run_reaches_csv_and_tensorboard(tmp_path):
    cfg = compose_cfg(
        "train", [*FAST, "allocation=mola_2468", "logger=[csv,tensorboard]"], tmp_path
    )
    result = run_train(cfg)
    scalars = result["scalars"]
    assert result["method"] == "mola_2468" and result["budget"]["kind"] == "none"
    assert scalars["test/finetuned/accuracy"] == result["metrics"]["finetuned"]["accuracy"]
    assert scalars["model/trainable_params"] == result["trainable_params"]
    tags = tb_tags(tmp_path / "tensorboard")
    for key in ("test/zero_shot/accuracy", "test/finetuned/accuracy", "model/trainable_params",
                "budget/spent", "val/lm_loss", "train/lm_loss", "router/L1.q_proj/balance",
                "allocation/heatmap", "router/usage/text_summary", "_hparams_/experiment"):  # fmt: skip
        assert key in tags, key
    assert tags["test/finetuned/accuracy"][-1][0] == 2  # at the final step
    hparams = OmegaConf.load(tmp_path / "csv" / "hparams.yaml")
    assert hparams.method == "mola_2468" and hparams.trainer.max_steps == 2
    usage = list(csv.DictReader((tmp_path / "csv" / "router_usage.csv").open()))
    assert {r["module"] for r in usage} == set(result_alloc_modules(tmp_path))
    for module in {r["module"] for r in usage}:  # shares of one module sum to 1
        assert sum(float(r["share"]) for r in usage if r["module"] == module) == pytest.approx(
            1, abs=1e-5
        )


def result_alloc_modules(run_dir):
    return Allocation.load(run_dir / "allocation.json").modules
