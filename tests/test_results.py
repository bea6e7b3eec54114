"""guilomo.results on fixture runs: grouping, mean ± std, CSV, unreadable runs, runs left
out for want of the metric, and refused --metric / --stage / --paired."""

import csv
import json
import math
import warnings

import pytest
from helpers import tree
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


def _with_nll(root, method: str = "guilomo") -> list[str]:
    """Give ``method``'s runs a finetuned nll; returns the folders of the runs without it."""
    without = []
    for path in sorted((root / "multirun").glob("*/metrics.json")):
        if path.parent.name == "corrupt":
            continue
        data = json.loads(path.read_text())
        if data.get("method") == method:
            data["metrics"]["finetuned"]["nll"] = 1.5
            path.write_text(json.dumps(data))
        else:
            without.append(str(path.parent))
    return without


def test_runs_without_the_metric_are_counted_and_named(tmp_path, capsys):
    make_runs(tmp_path)
    without = _with_nll(tmp_path)
    argv = [str(tmp_path), "--metric", "nll", "--csv", ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", results.ResultsWarning)
        assert results.main(argv) == 0
        head = capsys.readouterr().out.splitlines()[0]
        assert results.main([*argv[:-2], "--metric", "accuracy", "--csv", ""]) == 0
    assert head.startswith(f"18 runs; {len(without)} left out of the table, no finetuned/nll")
    assert len(without) == 12 and all(w in head for w in without[:5]) and "and 7 more" in head
    assert capsys.readouterr().out.splitlines()[0] == "18 runs"  # none left out


@pytest.mark.parametrize(
    "args, key, present",
    [
        (["--metric", "acuracy"], "--metric acuracy", "accuracy, n, nll"),
        (["--metric", "nll", "--stage", "zero_shot"], "--metric nll", "accuracy, n"),
        (["--stage", "finetund"], "--stage finetund", "finetuned, zero_shot"),
        (["--stage", "search"], "--stage search", "finetuned, zero_shot"),
        (["--paired", "guilomoo"], "--paired guilomoo", "lora, mola_2468, guilomo"),
        (["--paired", "zero_shot"], "--paired zero_shot", "lora, mola_2468, guilomo"),
    ],
)
def test_unknown_request_is_refused_with_what_is_present(tmp_path, args, key, present):
    make_runs(tmp_path / "runs")
    _with_nll(tmp_path / "runs")
    csv_path = tmp_path / "table.csv"
    before = tree(tmp_path)
    with warnings.catch_warnings(), pytest.raises(SystemExit) as e:
        warnings.simplefilter("ignore", results.ResultsWarning)
        results.main([str(tmp_path / "runs"), *args, "--csv", str(csv_path)])
    message = e.value.code  # a str: printed on stderr, exit status 1
    assert isinstance(message, str) and message.startswith(f"error: {key}:")
    assert "\n" not in message and message.endswith(f"present: {present}")
    assert tree(tmp_path) == before and not csv_path.exists()


def test_an_existing_csv_is_refused_unless_overwrite(tmp_path, capsys):
    make_runs(tmp_path / "runs")
    csv_file = tmp_path / "results.csv"
    csv_file.write_text("mine\n")
    with pytest.raises(SystemExit, match=r"--csv=.*already exists.*--overwrite"):
        results.main([str(tmp_path / "runs"), "--csv", str(csv_file)])
    assert csv_file.read_text() == "mine\n"
    assert results.main([str(tmp_path / "runs"), "--csv", str(csv_file), "--overwrite"]) == 0
    assert csv_file.read_text().startswith("backbone,task,method")
