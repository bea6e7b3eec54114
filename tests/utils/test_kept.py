"""Finished work is kept: a failure after training leaves the trained adapter (and the
metrics, once computed) on disk, and the error names them."""

import json

import pytest
from compose import compose_cfg
from helpers import fast

import guilomo.finetune.run as train_run
import guilomo.search.run as search_run
from guilomo.utils.kept import AfterTrainingError

FAST = fast(callbacks="checkpoints")
TRAIN = [*FAST, "allocation=lora", "eval.limit=4", "eval.zero_shot=false"]


def _boom(*args, **kwargs):
    raise OSError("simulated failure after training")


def test_failed_evaluation_keeps_the_adapter_and_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(train_run, "evaluate_datamodule", _boom)
    with pytest.raises(AfterTrainingError, match="simulated failure") as err:
        train_run.run_train(compose_cfg("train", TRAIN, tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "adapter") in msg and str(tmp_path / "checkpoints" / "last.ckpt") in msg
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "metrics.json").exists()  # no result without the evaluation


def test_failure_after_the_metrics_keeps_them(tmp_path, monkeypatch):
    monkeypatch.setattr(train_run, "format_table", _boom)
    with pytest.raises(AfterTrainingError) as err:
        train_run.run_train(compose_cfg("train", TRAIN, tmp_path))
    assert str(tmp_path / "metrics.json") in str(err.value)
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2


def test_failed_heatmap_keeps_the_allocation(tmp_path, monkeypatch):
    monkeypatch.setattr(search_run, "save_heatmap", _boom)
    cfg = compose_cfg(
        "search",
        [*FAST, "task.datamodule.val_size=8", "search.n_max=3", "search.r_max=2"],
        tmp_path,
    )
    with pytest.raises(AfterTrainingError) as err:
        search_run.run_search(cfg)
    assert str(tmp_path / "allocation.json") in str(err.value)
    assert (tmp_path / "allocation.json").is_file()
