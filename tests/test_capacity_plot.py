"""scripts/capacity_plot.py: the capacity curve's paired differences (uniform against
itself at the smallest budget, every other method against uniform at its budget)
recomputed by a plain loop from synthetic runs, and the plot written."""

import importlib.util
import math
import random
import statistics
from pathlib import Path

import pytest
from run_fixtures import write_metrics

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "capacity_plot.py"
spec = importlib.util.spec_from_file_location("capacity_plot", SCRIPT)
capacity_plot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(capacity_plot)

BUDGETS = (250_000, 1_000_000, 4_000_000)
SEEDS = (1, 2, 3, 4)
T95 = {2: 4.302652729911275, 3: 3.182446305284263}  # Student's t, 97.5 % quantile


def _make(root: Path) -> dict:
    rng, values, i = random.Random(3), {}, 0
    for method in ("uniform", "concentrated"):
        for b in BUDGETS:
            # concentrated misses seed 4 at the largest budget: pairs only where both ran
            seeds = SEEDS[:-1] if (method, b) == ("concentrated", BUDGETS[-1]) else SEEDS
            for seed in seeds:
                v = round(1.7 - 0.01 * BUDGETS.index(b) + rng.uniform(-0.05, 0.05), 5)
                values[(method, b, seed)] = v
                budget = {"kind": "params", "value": b}
                finetuned = {"nll": v, "n": 300}
                write_metrics(root / f"run{i}", method, seed, finetuned, budget)
                i += 1
    return values


def _plain(diffs):
    n, mean = len(diffs), sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean, T95[n - 1] * sd / math.sqrt(n), n


def test_paired_curves_match_a_plain_loop(tmp_path):
    values = _make(tmp_path)
    data = capacity_plot.curve([tmp_path], "nll")
    pairs = capacity_plot.paired_curves(data)
    assert set(pairs) == {"gain", "concentrated"}
    assert sorted(pairs["gain"]) == list(BUDGETS[1:])  # no gain row at the smallest budget
    for b in BUDGETS[1:]:
        diffs = [values[("uniform", b, s)] - values[("uniform", BUDGETS[0], s)] for s in SEEDS]
        got = pairs["gain"][b]
        assert (got["mean"], got["half"], got["n"]) == _approx(_plain(diffs))
    for b in BUDGETS:
        seeds = [s for s in SEEDS if ("concentrated", b, s) in values]
        diffs = [values[("concentrated", b, s)] - values[("uniform", b, s)] for s in seeds]
        got = pairs["concentrated"][b]
        assert (got["mean"], got["half"], got["n"]) == _approx(_plain(diffs))
    assert pairs["concentrated"][BUDGETS[-1]]["n"] == 3


def _approx(triple):
    mean, half, n = triple
    return (pytest.approx(mean, abs=1e-12), pytest.approx(half, rel=1e-6), n)


def test_cli_prints_both_tables_and_writes_the_plot(tmp_path, capsys):
    values = _make(tmp_path / "runs")
    out = tmp_path / "curve.png"
    assert capacity_plot.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    uniform_low = statistics.fmean(values[("uniform", BUDGETS[0], s)] for s in SEEDS)
    assert f"| uniform | {uniform_low:.4f}" in text
    assert "| uniform minus uniform at 250,000 | - |" in text
    assert "| concentrated minus uniform |" in text
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"


def test_no_runs_is_an_error(tmp_path, capsys):
    assert capacity_plot.main([str(tmp_path)]) == 1
    assert "no runs" in capsys.readouterr().err
