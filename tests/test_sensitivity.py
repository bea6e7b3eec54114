"""The placement sensitivity check: its verdict from paired held-out losses (fast), and
scripts/sensitivity.sh end to end on tiny_llama (slow)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, fast
from run_fixtures import write_metrics

from guilomo import results
from guilomo.sensitivity import DOES_NOT, PARTLY, RANKS, main, verdicts


def _write(root: Path, method: str, seed: int, nll: float, **accuracies) -> None:
    finetuned = {"nll": nll, **(accuracies or {"accuracy": 0.5})}
    write_metrics(
        root / f"{method}_{seed}", method, seed, finetuned, {"kind": "params", "value": 1000}
    )


def _runs(tmp_path, losses: dict[str, list[float]]):
    for method, values in losses.items():
        for seed, v in enumerate(values, start=1):
            _write(tmp_path, method, seed, v)
    return results.collect([tmp_path])


@pytest.mark.parametrize(
    "losses,verdict",
    [
        # both poor placements worse on every seed by a steady margin: they lose
        (
            {
                "uniform": [1.0, 1.1, 1.2],
                "concentrated": [1.05, 1.16, 1.24],
                "concentrated_low": [1.03, 1.12, 1.23],
            },
            RANKS,
        ),
        # one loses, the other's difference changes sign: partly
        (
            {
                "uniform": [1.0, 1.1, 1.2],
                "concentrated": [1.05, 1.16, 1.24],
                "concentrated_low": [1.03, 1.08, 1.21],
            },
            PARTLY,
        ),
        # poor placements *better* on loss: they do not lose
        ({"uniform": [1.0, 1.1, 1.2], "concentrated": [0.9, 1.0, 1.1]}, DOES_NOT),
        # a steady loss over only 2 seeds is not enough to call
        ({"uniform": [1.0, 1.1], "concentrated": [1.05, 1.15]}, DOES_NOT),
    ],
)
def test_verdict(tmp_path, losses, verdict):
    rows = results.paired(_runs(tmp_path, losses), "uniform", "nll")
    (cell,) = verdicts(rows).values()
    assert cell["verdict"] == verdict
    assert set(cell["lost"]) | set(cell["held"]) == set(losses) - {"uniform"}


def test_cli_prints_both_tables_and_the_verdict(tmp_path, capsys):
    _runs(tmp_path, {"uniform": [1.0, 1.1, 1.2], "concentrated": [1.05, 1.16, 1.24]})
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "finetuned/nll (lower is better)" in out and "finetuned/accuracy" in out
    assert f"this setting {RANKS} (concentrated loses)" in out
    assert "token_accuracy" not in out


def test_cli_prints_token_accuracy_for_loss_mode_runs(tmp_path, capsys):
    # loss-mode runs have no exact-match accuracy: their token accuracy is paired instead
    accuracies = {"uniform": [0.40, 0.42, 0.44], "concentrated": [0.38, 0.41, 0.46]}
    for method, values in accuracies.items():
        for seed, v in enumerate(values, start=1):
            _write(tmp_path, method, seed, 1.0 + seed / 10, token_accuracy=v)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "finetuned/accuracy" not in out
    table = out[out.index("finetuned/token_accuracy") :]
    # uniform minus concentrated: (0.02 + 0.01 - 0.02) / 3; uniform won 2 seeds, lost 1
    assert "+0.0033" in table and "| 2/1 |" in table


@pytest.mark.slow
def test_sensitivity_script_on_tiny_llama(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "sens"), "SEEDS": "1 2", "DRAWS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "sensitivity.sh"),
            *fast(steps=3, examples=32, batch=None),
            "task=chatterbot_topic",
            "budget=params",
            "budget.value=12000",
            "eval.mode=loss",
            "eval.zero_shot=false",
            "task.datamodule.test_size=16",
        ],
        capture_output=True,
        text=True,
        env={**env, "PYTHON": sys.executable},
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("uniform", "random_d1", "concentrated", "concentrated_low"):
        for seed in (1, 2):
            kind = method.split("_d")[0]
            assert (tmp_path / "sens" / kind / method / f"seed{seed}" / "metrics.json").is_file()
    verdict = (tmp_path / "sens" / "verdict.md").read_text()
    assert "verdict tiny_llama/chatterbot_topic at params=12000: this setting" in verdict
