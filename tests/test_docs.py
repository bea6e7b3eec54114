"""Docs that cannot rot: README.md and docs/*.md checked against the repository.

(a) **Links and paths.** Every relative markdown link ``[text](target)`` outside code
resolves: its file or folder exists, and an ``#anchor`` (also a bare ``#anchor`` within
the page) is a heading of the target page (GitHub's slugs). Every *repository path*
named in code resolves: in inline code spans and fenced blocks, each word that starts
with ``src/``, ``conf/``, ``scripts/``, ``tests/``, ``docs/``, ``benchmarks/`` or
``notebooks/`` (words holding a placeholder ``<...>``, a glob ``*``, ``{`` or ``$`` are
patterns, not paths, and are skipped); ``tests/<file>.py::<name>`` also needs
``def <name>`` in that file. In inline code, a bare file name ending in ``.py``,
``.toml`` or ``.sh`` (``search.py``, ``gsv.py``), or ``Makefile``, must be the name of
a file of the repository (top-level files included).

(b) **Commands.** Every ``python -m guilomo.<x>`` the pages name is a module that answers
``--help`` with exit 0 and prints its usage. All of them run in one subprocess, each
exactly as ``python -m`` runs it (:func:`runpy.run_module` as ``__main__`` with
``sys.argv = [<x>, "--help"]``), so torch is imported once, not once per module.

(c) **Python blocks.** The fenced blocks tagged ``python`` of :data:`RUN_PAGES` run, in
page order, in one namespace per page, in an empty temporary working folder, against a
tiny saved adapter (``tests/helpers.py`` ``make``: the 2-layer random LLaMA, mixed one-
and N-expert modules). The convention a block follows:

- every ``python`` block of those pages runs; a snippet that must not run is fenced as
  ``text``;
- a path the reader fills in is a string literal holding a ``<placeholder>``; the test
  substitutes it by its ending: ``.../adapter`` -> the tiny adapter's folder,
  ``.../allocation.json`` -> that adapter's allocation file. Any other placeholder
  fails the test: give it an ending above or add one to :data:`PLACEHOLDERS`;
- the SmolLM2 backbone (``load_backbone(..., source="smollm2_gguf")``) is swapped for
  the tiny LLaMA the adapter was made on (``guilomo.backbone.load_backbone`` is patched
  while the blocks run); keep blocks to calls that are cheap on that model.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, SUBPROCESS_ENV, base, linear_names, make, mixed

import guilomo.backbone
from guilomo.allocation import Allocation

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_PAGES = [ROOT / "README.md", ROOT / "docs" / "adapter.md"]
PATH_PREFIXES = ("src/", "conf/", "scripts/", "tests/", "docs/", "benchmarks/", "notebooks/")
BARE_FILE = re.compile(r"^(?:[\w.-]+\.(?:py|toml|sh)|Makefile)$")
NOT_A_PATH = re.compile(r"[<*{$]|\.\.\.")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
MODULE = re.compile(r"python -m (guilomo(?:\.\w+)+)")
PLACEHOLDER = re.compile(r"<[^<>\s]+>")
# (ending of a placeholder string, what replaces the whole string)
PLACEHOLDERS = (("/adapter", "adapter"), ("allocation.json", "allocation"))


# -- reading a page ---------------------------------------------------------------------
def split_page(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(the lines outside fenced blocks, [(info string, body)] of the fenced blocks)."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence = None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence, info, body = m.group(2), m.group(3), []
        elif (
            fence is not None and line.strip().startswith(fence) and not line.strip()[len(fence) :]
        ):
            blocks.append((info, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        else:
            prose.append(line)
    assert fence is None, "a fenced block is not closed"
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces -> '-'."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = split_page(page.read_text())
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def code_words(page: Path) -> list[tuple[str, bool]]:
    """Words of the page's code: (word, from inline code)."""
    prose, blocks = split_page(page.read_text())
    words = [
        (w, True) for line in prose for m in CODE_SPAN.finditer(line) for w in m.group(2).split()
    ]
    words += [(w, False) for _, body in blocks for w in body.split()]
    return words


def tracked_names() -> set[str]:
    """Names of the repository's files (run outputs, caches and hidden folders left out)."""
    skip = {"outputs", "multirun", "chains", "__pycache__", "node_modules"}
    names = set()
    for _dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in skip]
        names.update(filenames)
    return names


# -- (a) links and paths ----------------------------------------------------------------
def broken_links(page: Path) -> list[str]:
    prose, _ = split_page(page.read_text())
    out = []
    for line in prose:
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            target = m.group(1)
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                out.append(f"{target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                out.append(f"{target} (no heading #{anchor} in {file.name})")
    return out


def broken_paths(page: Path, names: set[str]) -> list[str]:
    out = []
    for raw, inline in code_words(page):
        word = raw.strip("()[],;:'\"").rstrip(".")
        if NOT_A_PATH.search(word):
            continue
        if word.startswith(PATH_PREFIXES):
            path, _, name = word.partition("::")
            if not (ROOT / path).exists():
                out.append(word)
            elif name and not re.search(
                rf"^\s*def {re.escape(name)}\(", (ROOT / path).read_text(), re.M
            ):
                out.append(f"{word} (no test {name})")
        elif inline and BARE_FILE.match(word) and word not in names:
            out.append(f"{word} (no file of that name)")
    return out


@pytest.mark.parametrize(
    "page", PAGES, ids=[p.name if p.parent == ROOT else f"docs/{p.name}" for p in PAGES]
)
def test_links_and_paths_resolve(page):
    bad = broken_links(page) + broken_paths(page, tracked_names())
    assert not bad, f"{page.relative_to(ROOT)}: {bad}"


def test_the_checks_see_what_they_should(tmp_path):
    """The checks themselves: a broken link, anchor, path, test name and bare file are found."""
    (tmp_path / "other.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n[ok](other.md#a-heading) [x](missing.md) [y](other.md#nope) [z](#top)\n"
        "`src/guilomo/nope.py` `tests/test_docs.py::test_nope` `nope.py` `src/<x>.py`\n"
        "```bash\npython scripts/nope.sh\n```\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#nope (no heading #nope in other.md)",
    ]
    assert broken_paths(page, tracked_names()) == [
        "src/guilomo/nope.py",
        "tests/test_docs.py::test_nope (no test test_nope)",
        "nope.py (no file of that name)",
        "scripts/nope.sh",
    ]


# -- (b) commands -----------------------------------------------------------------------
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
out = {}
for mod in sys.argv[1:]:
    buf = io.StringIO()
    sys.argv = [mod, "--help"]
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            runpy.run_module(mod, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:
        code, buf = 1, io.StringIO(f"{type(e).__name__}: {e}")
    out[mod] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def named_modules() -> list[str]:
    return sorted({m for page in PAGES for m in MODULE.findall(page.read_text())})


def test_every_module_the_docs_name_answers_help():
    modules = named_modules()
    assert "guilomo.results" in modules and "guilomo.sensitivity" in modules
    done = subprocess.run(
        [sys.executable, "-c", HELP_RUNNER, *modules],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    bad = {m: r for m, r in results.items() if r[0] != 0 or "usage" not in r[1].lower()}
    assert not bad, bad


# -- (c) Python blocks ------------------------------------------------------------------
class Substitute(ast.NodeTransformer):
    """Replaces every placeholder string literal by the path it stands for."""

    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    def visit_Constant(self, node: ast.Constant):
        if isinstance(node.value, str) and PLACEHOLDER.search(node.value):
            for ending, key in PLACEHOLDERS:
                if node.value.endswith(ending):
                    return ast.copy_location(ast.Constant(self.paths[key]), node)
            raise AssertionError(f"unknown placeholder {node.value!r}: see PLACEHOLDERS")
        return node


def python_blocks(page: Path) -> list[str]:
    return [body for info, body in split_page(page.read_text())[1] if info == "python"]


def run_blocks(page: Path, paths: dict[str, str]) -> None:
    namespace: dict = {"__name__": "__docs__"}
    for i, body in enumerate(python_blocks(page)):
        tree = ast.fix_missing_locations(Substitute(paths).visit(ast.parse(body)))
        exec(compile(tree, f"{page.name} python block {i + 1}", "exec"), namespace)


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("docs_adapter")
    make(root / "run" / "adapter", kind=mixed)
    names = linear_names(base()[0])
    allocation = root / "allocation.json"
    Allocation(mixed(names), top_k=2, meta={"backbone": "tiny_llama"}).save(allocation)
    return {"adapter": str(root / "run" / "adapter"), "allocation": str(allocation)}


@pytest.fixture
def tiny_backbone(monkeypatch):
    real = guilomo.backbone.load_backbone

    def load(name, source="hub", **kwargs):
        if source == "smollm2_gguf":
            return real("tiny-llama", source="tiny")
        return real(name, source=source, **kwargs)

    monkeypatch.setattr(guilomo.backbone, "load_backbone", load)


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page, tiny_paths, tiny_backbone, tmp_path, monkeypatch):
    assert python_blocks(page), f"{page.name} has no python block"
    monkeypatch.chdir(tmp_path)
    run_blocks(page, tiny_paths)


def test_a_broken_block_or_placeholder_fails(tmp_path, tiny_paths):
    page = tmp_path / "page.md"
    page.write_text('```python\nimport guilomo\n\nguilomo.from_pretrained("<run>/adapter")\n```\n')
    run_blocks(page, tiny_paths)
    page.write_text('```python\nimport guilomo\n\nguilomo.from_pretrained("<run>/nope")\n```\n')
    with pytest.raises(AssertionError, match="unknown placeholder"):
        run_blocks(page, tiny_paths)
    page.write_text("```python\nimport guilomo\n\nguilomo.no_such_function()\n```\n")
    with pytest.raises(AttributeError):
        run_blocks(page, tiny_paths)
