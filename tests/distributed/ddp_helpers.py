"""Helpers for the 2-process (gloo, CPU) tests: launch an entry point under DDP, record
what every process saw and held, replay the same global batches in one process.

The entry points run exactly as a user runs them (``python search.py trainer=ddp ...``):
Lightning's launcher starts the second process itself. ``Recorder`` is passed in as a
callback (``+callbacks.record._target_=ddp_helpers.Recorder``), so this folder is put
on ``PYTHONPATH`` of both processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from guilomo.data.datamodule import collate_train
from guilomo.search.layer import gsv_parameters, search_layers

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DDP_CPU = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
]


def launch(script: str, overrides: list[str], run_dir: Path, timeout: float = 900) -> str:
    """Run ``python <script> <overrides>`` in ``run_dir``; returns its output, fails with it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env.pop("LOCAL_RANK", None)
    cmd = [sys.executable, str(ROOT / script), *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-6000:]}"
    return out


def record_overrides(out: Path) -> list[str]:
    return [
        "+callbacks.record._target_=ddp_helpers.Recorder",
        f"+callbacks.record.out={out}",
    ]


class Recorder(L.Callback):
    """Per step and per process: the train batch, the val batches the outer step drew,
    the GSVs after the step and the expert usage; saved as ``<out>/rank<r>.pt``."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.steps: list[dict] = []
        self._val: list[dict] = []
        self.init: list | None = None

    def on_fit_start(self, trainer, pl_module):
        draw = getattr(pl_module, "next_val_batch", None)
        if draw is None:
            return
        self.init = [p.detach().clone() for p in gsv_parameters(pl_module.model)]

        def recorded():
            batch = draw()
            self._val.append({k: v.detach().clone() for k, v in batch.items()})
            return batch

        pl_module.next_val_batch = recorded

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = {"train": {k: v.detach().clone() for k, v in batch.items()}, "val": self._val}
        self._val = []
        if hasattr(pl_module, "next_val_batch"):
            step["gsv"] = [p.detach().clone() for p in gsv_parameters(pl_module.model)]
            step["usage"] = {
                n: m.usage.clone()
                for n, m in search_layers(pl_module.model).items()
                if m.usage is not None
            }
        self.steps.append(step)

    def on_fit_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"steps": self.steps, "init": self.init, "world_size": trainer.world_size},
            self.out / f"rank{trainer.global_rank}.pt",
        )


def load_records(out: Path, world: int = 2) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def merge(batches: list[dict], pad_id: int) -> dict:
    """One batch holding the rows of ``batches`` (right padding removed, re-padded)."""
    feats = []
    for b in batches:
        for ids, mask, labels in zip(b["input_ids"], b["attention_mask"], b["labels"], strict=True):
            keep = mask.bool()
            feats.append({"input_ids": ids[keep].tolist(), "labels": labels[keep].tolist()})
    return collate_train(feats, pad_id)


class Replay(L.LightningDataModule):
    """The global batches of a recorded data-parallel run, for one process."""

    def __init__(self, train: list[dict], val: list[dict]):
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=None)  # the batches as they are

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=None)


class StopAt(L.Callback):
    """Ends the fit gracefully after ``step`` optimiser steps (an interrupted run)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True
