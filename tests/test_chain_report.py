"""scripts/chain_report.py: paired GuiLoMo-minus-baseline differences recomputed by a
plain loop from the fixture runs' accuracies, and the searches' movement table."""

import importlib.util
import json
import statistics
import warnings
from pathlib import Path

from run_fixtures import SEEDS, TASKS, make_runs

from guilomo.results import collect

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "chain_report.py"
spec = importlib.util.spec_from_file_location("chain_report", SCRIPT)
chain_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chain_report)


def test_paired_differences_match_a_plain_loop(tmp_path):
    values = make_runs(tmp_path / "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's dead and corrupt runs
        rows = chain_report.paired_rows(collect([tmp_path / "train"]), "accuracy")
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[1:] == sorted(TASKS)
    body = {
        r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")[1:]] for r in rows[2:]
    }
    assert set(body) == {"lora", "mola_2468"}  # every method but GuiLoMo itself
    for method, cells in body.items():
        for task, cell in zip(sorted(TASKS), cells, strict=True):
            diffs = [values[(task, "guilomo")][s] - values[(task, method)][s] for s in SEEDS]
            wins = sum(d > 0 for d in diffs)
            losses = sum(d < 0 for d in diffs)
            expected = f"{statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs):.3f}"
            assert cell == f"{expected} ({wins}/{losses})", (method, task)


def test_search_table_reads_start_and_end_of_each_search(tmp_path):
    run = tmp_path / "search" / "tiny" / "chatterbot_topic" / "seed2"
    run.mkdir(parents=True)
    meta = {
        "task": "chatterbot_topic",
        "seed": 2,
        "trainable_params": 12345,
        "read_out": {"experts": 7, "total_rank": 30},
        "diagnostics": {
            "steps": 40,
            "initial_readout": {"a": [2, 3], "b": [1, 1, 4]},  # 5 experts, total rank 11
            "experts_changed": 0.5,
            "converged": False,
        },
    }
    (run / "allocation.json").write_text(json.dumps({"meta": meta}))
    rows = chain_report.search_rows(tmp_path)
    assert rows[2] == "| chatterbot_topic | 2 | 40 | 5 -> 7 | 11 -> 30 | 50.0% | no | 12,345 |"
