"""guilomo.results --paired: the paired report against a plain hand-computed loop on
synthetic metrics.json files (draws averaged per seed, pairs only at equal budget)."""

import math
import random
import warnings

import pytest
from run_fixtures import write_metrics

from guilomo import results

TASKS = {"task_a": (1, 2, 3, 4, 5), "task_b": (1, 2, 3)}
DRAWS = {"guilomo": 1, "lora": 1, "random": 3}


def _write(root, i, task, method, seed, value, budget):
    finetuned = {"accuracy": value, "n": 500}
    fields = {"task": task, "backbone": "tiny_llama", "trainable_params": budget["value"]}
    write_metrics(root / f"run{i}", method, seed, finetuned, budget, **fields)


def _make(root) -> dict:
    """Runs at budget=match (each seed its own searched size); returns
    ``{(task, method): {seed: [values]}}``."""
    rng = random.Random(0)
    values: dict = {}
    i = 0
    for task, seeds in TASKS.items():
        for seed in seeds:
            budget = {"kind": "params", "value": 1000 + seed, "matched": f"/s{seed}.json"}
            for method, draws in DRAWS.items():
                for _ in range(draws):
                    v = round(rng.uniform(0.3, 0.9), 4)
                    values.setdefault((task, method), {}).setdefault(seed, []).append(v)
                    _write(root, i, task, method, seed, v, budget)
                    i += 1
    # not pairs: lora at another explicit budget, random at a seed GuiLoMo has not run
    _write(root, i, "task_a", "lora", 1, 0.99, {"kind": "params", "value": 999})
    _write(root, i + 1, "task_a", "random", 9, 0.99, {"kind": "params", "value": 1009})
    return values


def _mean(xs):
    return sum(xs) / len(xs)


def _sd(xs):
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_paired_rows_match_a_plain_loop(tmp_path):
    stats = pytest.importorskip("scipy.stats")
    values = _make(tmp_path)
    rows = results.paired(results.collect([tmp_path]), "guilomo")
    by = {(r["task"], r["method"]): r for r in rows}
    assert set(by) == {(t, m) for t in TASKS for m in ("lora", "random")}
    for (task, method), row in by.items():
        ours, theirs = values[(task, "guilomo")], values[(task, method)]
        seeds = sorted(set(ours) & set(theirs))
        diffs = [_mean(ours[s]) - _mean(theirs[s]) for s in seeds]
        n = len(diffs)
        half = stats.t.ppf(0.975, n - 1) * _sd(diffs) / math.sqrt(n)
        assert row["n"] == n == len(TASKS[task]) and row["seeds"] == seeds
        assert row["budget"] == "params=match"
        assert row["diffs"] == pytest.approx(diffs)
        assert row["mean"] == pytest.approx(_mean(diffs))
        assert row["std"] == pytest.approx(_sd(diffs))
        assert row["ci_low"] == pytest.approx(_mean(diffs) - half, abs=1e-6)
        assert row["ci_high"] == pytest.approx(_mean(diffs) + half, abs=1e-6)
        assert (row["wins"], row["losses"]) == (
            sum(d > 0 for d in diffs),
            sum(d < 0 for d in diffs),
        )
        draws = DRAWS[method]
        assert row["draws"] == [draws] * n and row["reference_draws"] == [1] * n
        scores = [v for s in seeds for v in theirs[s]]
        assert row["runs"] == draws * n
        assert row["score_mean"] == pytest.approx(_mean(scores))
        assert row["score_std"] == pytest.approx(_sd(scores))
        if draws == 1:
            assert row["draw_std"] is None
        else:  # pooled within-seed spread of the draws
            pooled = math.sqrt(_mean([_sd(theirs[s]) ** 2 for s in seeds]))
            assert row["draw_std"] == pytest.approx(pooled)


def test_cli_prints_the_paired_report(tmp_path, capsys):
    _make(tmp_path / "runs")
    with warnings.catch_warnings():
        warnings.simplefilter("error", results.ResultsWarning)  # every run readable
        assert results.main(["--paired", "guilomo", str(tmp_path / "runs"), "--csv", ""]) == 0
    out = capsys.readouterr().out
    rows = results.paired(results.collect([tmp_path / "runs"]), "guilomo")
    r = next(x for x in rows if x["task"] == "task_a" and x["method"] == "random")
    line = next(ln for ln in out.splitlines() if ln.startswith("| task_a | params=match | random"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:5] == ["5", "3"]  # 5 seeds, 3 draws each
    assert cells[5] == f"{r['score_mean']:.4f} ± {r['score_std']:.4f} (15)"
    assert cells[7] == f"{r['mean']:+.4f} ± {r['std']:.4f}"
    assert cells[8] == f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
    assert cells[9] == f"{r['wins']}/{r['losses']}"
    # the plain table still counts every run (draws are runs there)
    assert "| random | " in out and "guilomo minus each method" in out


def test_no_reference_runs(tmp_path):
    _make(tmp_path)
    rows = results.paired(results.collect([tmp_path]), "adalora")
    assert rows == [] and "no pairs" in results.paired_markdown(rows, "adalora")


def test_t_quantiles():
    stats = pytest.importorskip("scipy.stats")
    for df in (*range(1, 60), 100, 1000):
        assert results.t95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-6)


def test_lower_is_better_metric_is_signed_for_the_reference(tmp_path):
    # nll: lower is better, so the difference is method - reference and a won seed is one
    # where the reference's loss is lower
    budget = {"kind": "params", "value": 100}
    losses = {"guilomo": [1.0, 2.0, 3.0], "uniform": [1.5, 2.1, 2.9]}
    i = 0
    for method, vals in losses.items():
        for seed, v in enumerate(vals, start=1):
            write_metrics(tmp_path / f"run{i}", method, seed, {"accuracy": 0.5, "nll": v}, budget)
            i += 1
    (row,) = results.paired(results.collect([tmp_path]), "guilomo", metric="nll")
    assert row["diffs"] == pytest.approx([0.5, 0.1, -0.1])
    assert (row["wins"], row["losses"]) == (2, 1)
    text = results.paired_markdown([row], "guilomo")
    assert "lower is better" in text and "method - guilomo" in text
    (acc,) = results.paired(results.collect([tmp_path]), "guilomo", metric="accuracy")
    assert acc["diffs"] == [0.0, 0.0, 0.0] and "lower is better" not in results.paired_markdown(
        [acc], "guilomo"
    )


def test_per_seed_table_shows_the_cells_the_pairs_use(tmp_path, capsys):
    """--per-seed: every method's score at every seed, draws averaged by a plain loop."""
    values = _make(tmp_path / "runs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", results.ResultsWarning)
        argv = ["--per-seed", str(tmp_path / "runs"), "--csv", ""]
        assert results.main(argv) == 0
    out = capsys.readouterr().out
    head = "finetuned/accuracy, tiny_llama/task_a, budget params=match: per seed (draws)"
    a = out.split(head)[1].split("\n\n")[1]  # the table under that caption
    rows = {ln.split("|")[1].strip(): ln for ln in a.splitlines() if ln.startswith("| ")}
    assert rows["method"].split("|")[2:7] == [f" seed {s} " for s in TASKS["task_a"]]
    for method, draws in DRAWS.items():
        cells = [c.strip() for c in rows[method].strip().strip("|").split("|")][1:]
        for seed, cell in zip(TASKS["task_a"], cells, strict=True):
            v = values[("task_a", method)][seed]
            suffix = f" ({draws})" if draws > 1 else ""
            assert cell == f"{_mean(v):.4f}{suffix}"
    # lora's run at another explicit budget, and random at seed 9, are their own tables
    assert "budget params=999: per seed" in out and "budget params=1009: per seed" in out
