"""BIG-bench: the parsing on small archives built from invented tasks, and the real archive.

The fast tests build an archive laid out like the ``bigbench`` sdist from
``tests/fixtures/bigbench_task.json`` (invented reviews in BIG-bench's task.json
format, not BIG-bench data) and from ``FAKE``. The real archive (358 MB) is downloaded
once by pip into ``$GUILOMO_CACHE/bigbench`` (default ``~/.cache/guilomo/bigbench``),
outside the repository; that test is marked ``network`` and runs only with
``pytest --network`` (``make test-network``).
"""

import io
import json
import tarfile
from pathlib import Path

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


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bigbench_task.json"
REVIEWS = json.loads(FIXTURE.read_text())
OPTIONS = ("ambivalent", "positive", "negative", "neutral")


def write_archive(cache, tasks: dict) -> None:
    """An archive laid out like the bigbench sdist holding ``{subtask: task dict}``."""
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(cache / bigbench.ARCHIVE, "w:gz") as tar:
        for name, task in tasks.items():
            data = json.dumps(task).encode()
            info = tarfile.TarInfo(bigbench.MEMBER.format(name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_cache(tmp_path):
    """A cache dir holding a small archive laid out like the bigbench sdist."""
    write_archive(tmp_path, {"toy": FAKE, "toy/sub": FAKE})
    return tmp_path


def test_nested_subtask_from_default_cache(tmp_path, monkeypatch):
    """What test_real_multiemo checks, on the invented reviews: a nested subtask read from
    the default cache, options in file order, the gold by argmax, prefix and options."""
    monkeypatch.setenv("GUILOMO_CACHE", str(tmp_path))
    write_archive(bigbench.default_cache(), {"reviews/sentence_en": REVIEWS})
    examples = load_task("bigbench", subtask="reviews/sentence_en")
    assert len(examples) == len(REVIEWS["examples"]) == 8
    assert {e.options for e in examples} == {OPTIONS}
    assert {e.output for e in examples} == set(OPTIONS)
    assert [e.output for e in examples[:4]] == ["positive", "negative", "neutral", "ambivalent"]
    assert examples[3].label == 0 and examples[0].label == 1
    assert examples[0].instruction == REVIEWS["task_prefix"]
    assert examples[0].input == (
        "The lamp arrived on time and lights the desk well."
        "\nOptions:\n- ambivalent\n- positive\n- negative\n- neutral"
    )
    assert (bigbench.default_cache() / "tasks/reviews/sentence_en/task.json").is_file()


def test_description_and_no_appended_choices(tmp_path):
    """Without ``task_prefix`` the description is the instruction; the options are not
    appended when the task says ``append_choices_to_input: false``."""
    task = {k: v for k, v in REVIEWS.items() if k != "task_prefix"}
    task["append_choices_to_input"] = False
    write_archive(tmp_path, {"plain": task})
    examples = load_task("bigbench", subtask="plain", cache_dir=str(tmp_path))
    assert examples[0].instruction == REVIEWS["description"]
    assert examples[0].input == "The lamp arrived on time and lights the desk well."
    assert examples[0].options == OPTIONS


@pytest.mark.network
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
