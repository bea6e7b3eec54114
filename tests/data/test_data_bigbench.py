"""BIG-bench: a real task from the pip-downloaded archive, and offline paths on a fake archive.

The real archive (358 MB) is downloaded once by pip into ``$GUILOMO_CACHE/bigbench``
(default ``~/.cache/guilomo/bigbench``), outside the repository; the extracted
task.json is cached next to it so later runs do not reopen the archive.
"""

import io
import json
import tarfile

import pytest

from guilomo.data import load_task
from guilomo.data.tasks import bigbench

FAKE = {
    "name": "toy",
    "task_prefix": "Is the statement positive or negative?",
    "examples": [
        {
            "input": f"Statement {i}.",
            "target_scores": {"positive": int(i % 2 == 0), "negative": int(i % 2)},
        }
        for i in range(10)
    ],
}


@pytest.fixture
def fake_cache(tmp_path):
    """A cache dir holding a small archive laid out like the bigbench sdist."""
    with tarfile.open(tmp_path / bigbench.ARCHIVE, "w:gz") as tar:
        for name, task in [("toy", FAKE), ("toy/sub", FAKE)]:
            data = json.dumps(task).encode()
            info = tarfile.TarInfo(bigbench.MEMBER.format(name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tmp_path


def test_real_multiemo():
    examples = load_task("bigbench", subtask="multiemo/reviews_sentence_en")
    assert len(examples) == 2531
    assert {e.options for e in examples} == {("ambivalent", "positive", "negative", "neutral")}
    assert {e.output for e in examples} == {"ambivalent", "positive", "negative", "neutral"}
    assert examples[0].instruction.startswith("Determine whether given opinion is positive")
    assert examples[0].input.endswith("\nOptions:\n- ambivalent\n- positive\n- negative\n- neutral")
    assert (bigbench.default_cache() / "tasks/multiemo/reviews_sentence_en/task.json").is_file()


def test_fake_archive_extracts_once(fake_cache, monkeypatch):
    examples = load_task("bigbench", subtask="toy", cache_dir=str(fake_cache))
    assert len(examples) == 10 and examples[1].output == "negative" and examples[1].label == 1
    assert examples[0].instruction == "Is the statement positive or negative?"
    assert (fake_cache / "tasks/toy/task.json").is_file()
    (fake_cache / bigbench.ARCHIVE).unlink()  # cached json: the archive is no longer needed
    monkeypatch.setattr(bigbench, "_download", lambda cache: pytest.fail("downloaded again"))
    assert load_task("bigbench", subtask="toy", cache_dir=str(fake_cache)) == examples


def test_unknown_subtask(fake_cache):
    with pytest.raises(FileNotFoundError, match="no BIG-bench task 'nope'"):
        load_task("bigbench", subtask="nope", cache_dir=str(fake_cache))


def test_cannot_fetch_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(bigbench, "_download", lambda cache: "ERROR: network is unreachable")
    with pytest.raises(FileNotFoundError) as err:
        load_task("bigbench", subtask="social_iqa", cache_dir=str(tmp_path / "bb"))
    msg = str(err.value)
    assert "network is unreachable" in msg
    assert f"python -m pip download --no-deps bigbench==1.0.0 -d {tmp_path / 'bb'}" in msg


def test_datamodule_on_bigbench(make_dm, fake_cache):
    dm = make_dm(
        "bigbench",
        task_kwargs={"subtask": "toy", "cache_dir": str(fake_cache)},
        val_size=2,
        test_size=2,
    )
    assert len(dm.train_examples) == 6 and dm.spec.multiple_choice
    assert dm.prompt_text(dm.test_examples[0]).endswith(
        "\nOptions:\n- positive\n- negative\n\n### Response:\n"
    )
