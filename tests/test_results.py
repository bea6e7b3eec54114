"""guilomo.results on fixture runs: grouping, mean ± std, CSV, and unreadable runs."""

import csv
import json
import math
import warnings

import pytest
from run_fixtures import METHODS, SEEDS, TASKS, make_runs

from guilomo import results


def _stats(xs):
    """Independent reference: mean and sample standard deviation by the formula."""
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_collect_warns_on_missing_and_corrupt(tmp_path):
    make_runs(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = results.collect([tmp_path])
    msgs = [str(w.message) for w in caught if issubclass(w.category, results.ResultsWarning)]
    assert len(runs) == len(TASKS) * len(METHODS) * len(SEEDS)
    assert len(msgs) == 2, msgs
    assert any("corrupt" in m and "metrics.json" in m and "not valid JSON" in m for m in msgs)
    assert any(
        str(tmp_path / "multirun" / "dead") in m and "without metrics.json" in m for m in msgs
    )
    assert not any("search_run" in m for m in msgs)  # a search run is not a missing result
    # the old-style file without "method" is named from its allocation.json
    old = [r for r in runs if r.raw.get("method") is None]
    assert len(old) == 1 and old[0].method == "mola_2468"
    with pytest.warns(results.ResultsWarning, match="no such folder"):
        assert results.collect([tmp_path / "nowhere"]) == []


def test_summary_means_and_spread(tmp_path):
    values = make_runs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", results.ResultsWarning)
        rows = results.summarise(results.collect([tmp_path / "multirun", tmp_path]))
    by = {(r["task"], r["method"]): r for r in rows}
    assert set(by) == {(t, m) for t in TASKS for m in [*METHODS, "zero_shot"]}
    for (task, method), per_seed in values.items():
        row = by[(task, method)]
        mean, std = _stats([per_seed[s] for s in SEEDS])
        assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)
        assert row["n"] == 3 and row["seeds"] == list(SEEDS)
        assert row["trainable_params"] == METHODS[method][1]
        assert row["search_seconds"] == (12.5 if method == "guilomo" else None)
    # zero-shot: once per (task, seed), not once per run
    z = by[("chatterbot_topic", "zero_shot")]
    assert z["n"] == 3 and z["mean"] == pytest.approx(0.12) and z["trainable_params"] == 0
    # methods in the paper's order
    assert [r["method"] for r in rows if r["task"] == TASKS[0]] == [
        "zero_shot",
        "lora",
        "mola_2468",
        "guilomo",
    ]


def test_markdown_and_csv(tmp_path, capsys):
    values = make_runs(tmp_path / "runs")
    out = tmp_path / "table.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", results.ResultsWarning)
        assert results.main([str(tmp_path / "runs"), "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "18 runs" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert (
        table[0]
        == "| method | bigbench_multiemo | chatterbot_topic | trainable params | search s |"  # sorted
    )
    guilomo = next(ln for ln in table if ln.startswith("| guilomo "))
    mean, std = _stats([values[("bigbench_multiemo", "guilomo")][s] for s in SEEDS])
    assert f"{mean:.4f} ± {std:.4f} (3)" in guilomo
    assert "3,995" in guilomo and guilomo.endswith("| 12 |")  # fmean 12.5, printed :.0f
    with out.open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(TASKS) * (len(METHODS) + 1)
    line = next(x for x in lines if x["method"] == "lora" and x["task"] == "chatterbot_topic")
    assert float(line["mean"]) == pytest.approx(
        _stats(list(values[("chatterbot_topic", "lora")].values()))[0]
    )
    assert line["n"] == "3" and line["seeds"] == "1 2 3" and line["search_seconds"] == ""


def test_no_runs(tmp_path, capsys):
    assert results.main([str(tmp_path), "--csv", str(tmp_path / "x.csv")]) == 1
    assert "(no runs found)" in capsys.readouterr().out
    assert not (tmp_path / "x.csv").exists()


def test_single_run_has_no_spread(tmp_path):
    make_runs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", results.ResultsWarning)
        runs = [r for r in results.collect([tmp_path]) if r.seed == 1]
    rows = results.summarise(runs)
    assert all(r["n"] == 1 and r["std"] is None for r in rows)
    assert not any("± " in ln for ln in results.markdown(rows).splitlines() if ln.startswith("| "))
    data = json.loads((runs[0].path / "metrics.json").read_text())
    assert runs[0].value() == data["metrics"]["finetuned"]["accuracy"]
