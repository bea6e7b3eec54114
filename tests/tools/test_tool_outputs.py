"""The adapter tools never clobber: every refused ``out=`` is one line naming the key and
the fix, exits non-zero, comes before any model loads, and leaves every byte as it was.

One tiny adapter lives in a run folder (``<root>/run/adapter``, the run marked by its
``.hydra`` folder) beside an unrelated non-empty folder, a text file, an empty folder
and a prompts file. Each row of :data:`REFUSED` is a command line; the whole ``<root>``
tree is hashed before and after it. The accepted rows check that what the rule allows
(a new folder, a new name inside the run folder, ``overwrite=true`` over someone else's
folder or file) is written whole, through a temporary sibling renamed into place.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, SUBPROCESS_ENV, make, single, tree

from guilomo.moe.io import CONFIG_FILE
from guilomo.tools import collapsing, export_peft, generate, merge, push
from guilomo.utils.cli import run
from guilomo.utils.io import staged_folder

TOOLS = {"export_peft": export_peft, "merge": merge, "generate": generate}
NEW_FOLDER = "choose a path outside it"
OVERWRITE = "pass overwrite=true"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tools")
    (root / "run" / ".hydra").mkdir(parents=True)
    (root / "run" / ".hydra" / "config.yaml").write_text("allocation: {}\n")
    (root / "run" / "metrics.json").write_text('{"task": "t"}\n')
    make(root / "run" / "adapter")
    (root / "other").mkdir()
    (root / "other" / "config.json").write_text('{"model_type": "someone else\'s"}\n')
    (root / "other" / "model.safetensors").write_bytes(b"\0" * 64)
    (root / "note.txt").write_text("an unrelated text file\n")
    (root / "empty").mkdir()
    (root / "prompts.txt").write_text("What is AI?\nHello\nName a colour\nWho are you?\n")
    (root / "link").symlink_to(root / "run" / "adapter")
    return root


# (tool, out=, extra arguments, a fragment of the one-line message)
REFUSED = [
    (tool, out, extra, want)
    for tool in ("export_peft", "merge")
    for out, extra, want in [
        ("run/adapter", [], "is the input adapter="),
        ("run/adapter", ["overwrite=true"], "is the input adapter="),
        ("link", ["overwrite=true"], "is the input adapter="),
        ("run/adapter/sub", [], "lies inside the input adapter="),
        ("run", [], "contains the input adapter="),
        ("run", ["overwrite=true"], "contains the input adapter="),
        (".", ["overwrite=true"], "contains the input adapter="),
        ("run/.hydra", ["overwrite=true"], "would replace files of the run folder"),
        ("run/metrics.json", ["overwrite=true"], "would replace files of the run folder"),
        ("other", [], "already exists and is not empty (a folder)"),
        ("note.txt", [], "already exists and is not empty (a file)"),
        ("note.txt/sub", [], "is not a folder"),
        (
            "prompts.txt",
            ["overwrite=true", "collapse=mean", "prompts_file={root}/prompts.txt"],
            "is the input prompts_file=",
        ),
    ]
] + [
    ("generate", out, extra, want)
    for out, extra, want in [
        ("empty", [], "is a folder"),
        ("other", ["overwrite=true"], "is a folder"),
        ("note.txt", [], "already exists and is not empty (a file)"),
        ("run/adapter/gen.jsonl", ["overwrite=true"], "lies inside the input adapter="),
        ("run", [], "contains the input adapter="),
        ("run/metrics.json", ["overwrite=true"], "would replace files of the run folder"),
        ("prompts.txt", ["overwrite=true"], "is the input prompts_file="),
    ]
]


def _argv(root: Path, tool: str, out: str, extra: list[str]) -> list[str]:
    argv = [f"adapter={root / 'run' / 'adapter'}", f"out={root / out}"]
    if tool == "generate":
        argv.append(f"prompts_file={root / 'prompts.txt'}")
    return argv + [a.format(root=root) for a in extra]


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before out= was checked")


@pytest.mark.parametrize("tool, out, extra, want", REFUSED)
def test_refused_out_is_one_line_before_any_work(root, monkeypatch, tool, out, extra, want):
    module = TOOLS[tool]
    # export_peft and merge load through guilomo.tools.collapsing, generate itself
    monkeypatch.setattr(collapsing, "from_pretrained", _no_model)
    if hasattr(module, "from_pretrained"):
        monkeypatch.setattr(module, "from_pretrained", _no_model)
    before = tree(root)
    with pytest.raises(SystemExit) as e:
        run(lambda: module.main(_argv(root, tool, out, extra)))
    message = e.value.code
    assert isinstance(message, str) and message.startswith("error: out=")  # exit status 1
    assert "\n" not in message and want in message
    assert NEW_FOLDER in message or OVERWRITE in message or "choose" in message
    assert tree(root) == before


@pytest.mark.parametrize("tool", ["export_peft", "merge", "generate"])
def test_the_command_prints_one_line_and_exits_1(root, tool):
    before = tree(root)
    argv = _argv(root, tool, "run", [])
    proc = subprocess.run(
        [sys.executable, "-m", f"guilomo.{tool}", *argv],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: out=")
    assert "Traceback" not in proc.stderr
    assert tree(root) == before


@pytest.fixture()
def single_run(tmp_path) -> Path:
    """A one-expert adapter in a run folder, beside someone else's non-empty folder."""
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    make(tmp_path / "run" / "adapter", kind=single)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}\n")
    return tmp_path


def test_overwrite_true_replaces_someone_elses_folder_whole(single_run):
    run_before = tree(single_run / "run")
    export_peft.main(
        [
            f"adapter={single_run / 'run' / 'adapter'}",
            "out=" + str(single_run / "other"),
            "overwrite=true",
        ]
    )
    assert (single_run / "other" / CONFIG_FILE).is_file()
    assert not (single_run / "other" / "config.json").exists()  # replaced, not mixed in
    assert sorted(p.name for p in single_run.iterdir()) == ["other", "run"]  # no temp left
    assert tree(single_run / "run") == run_before


def test_a_new_name_inside_the_run_folder_is_allowed(single_run):
    run_before = tree(single_run / "run")
    out = single_run / "run" / "merged"
    merge.main([f"adapter={single_run / 'run' / 'adapter'}", f"out={out}"])
    assert (out / "config.json").is_file() and (out / "README.md").is_file()
    after = {k: v for k, v in tree(single_run / "run").items() if not k.startswith("merged")}
    assert after == run_before


def test_generate_overwrites_a_file_only_when_asked(single_run):
    adapter = single_run / "run" / "adapter"
    out = single_run / "gen.jsonl"
    out.write_text("old\n")
    args = [f"adapter={adapter}", "prompt=What is AI?", "max_new_tokens=2", f"out={out}"]
    with pytest.raises(SystemExit, match="pass overwrite=true"):
        run(lambda: generate.main(args))
    assert out.read_text() == "old\n"
    rows = generate.main([*args, "overwrite=true"])
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == rows


def test_a_failed_write_leaves_out_as_it_was(single_run, monkeypatch):
    def half_then_fail(model, meta, out, *args):
        (Path(out) / "adapter_config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_peft, "export_peft", half_then_fail)
    before = tree(single_run)
    argv = [f"adapter={single_run / 'run' / 'adapter'}", f"out={single_run / 'other'}"]
    with pytest.raises(RuntimeError, match="disk full"):
        export_peft.main([*argv, "overwrite=true"])
    assert tree(single_run) == before  # the old folder, and no temporary sibling


@pytest.mark.parametrize("existing", [None, "empty", "folder", "file"])
def test_staged_folder_renames_into_place(tmp_path, existing):
    out = tmp_path / "out"
    if existing == "empty":
        out.mkdir()
    elif existing == "folder":
        out.mkdir()
        (out / "old.txt").write_text("old")
    elif existing == "file":
        out.write_text("old")
    with staged_folder(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "new.txt").write_text("new")
    assert tree(tmp_path) == {"out": "dir", "out/new.txt": tree(out)["new.txt"]}


@pytest.mark.parametrize("module", [export_peft, generate, merge, push])
def test_help_prints_the_usage_and_exits_0(module, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["adapter=x", "--help"])
    assert e.value.code == 0 and capsys.readouterr().out == module.USAGE + "\n"
