"""The comparison notebook runs headless (nbclient) on fixture runs, and on no runs."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient
from run_fixtures import make_runs

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_allocations.ipynb"


def run_notebook(runs_dir: Path, monkeypatch) -> str:
    monkeypatch.setenv("GUILOMO_RUNS", str(runs_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert o.get("output_type") != "error", o
            out.append(o.get("text", ""))
            data = o.get("data", {})
            out.append(data.get("text/markdown", "") + data.get("text/plain", ""))
            if "image/png" in data:
                out.append("<image>")
    return "\n".join(out)


def test_notebook_on_fixture_runs(tmp_path, monkeypatch):
    make_runs(tmp_path)
    text = run_notebook(tmp_path, monkeypatch)
    assert "18 runs under" in text
    # the two unreadable runs are named
    assert "corrupt" in text and "without metrics.json" in text
    # the results table, every method, and the joined allocations
    assert "| method | bigbench_multiemo | chatterbot_topic | trainable params | search s |" in text
    for method in ("zero_shot", "lora", "mola_2468", "guilomo"):
        assert f"| {method} |" in text
    assert "guilomo      chatterbot_topic        1" in text
    # one column per (task, method), on shared scales: counts 1..8, mean rank 4
    assert "drew 6 allocations; experts 1-8, mean rank 4.0-4.0" in text
    assert "<image>" in text


def test_notebook_says_when_there_are_no_runs(tmp_path, monkeypatch):
    text = run_notebook(tmp_path, monkeypatch)
    assert "No runs found under" in text and "(no runs found)" in text
    assert "No allocations to draw." in text
