"""Task loaders on the tiny hub-format fixtures and the installed ChatterBot corpus."""

import json
from pathlib import Path

import pytest

from guilomo.data import TASKS, get_task, load_task
from guilomo.eval.answer import extract_answer, is_correct, normalize_answer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

HUB = {  # task: (fixture, rows kept)
    "scienceqa": ("scienceqa.jsonl", 5),  # 2 of 7 rows have an image
    "commonsense_qa": ("commonsense_qa.jsonl", 5),  # 1 of 6 has no answerKey
    "openbookqa": ("openbookqa.jsonl", 5),
    "glue_cola": ("glue_cola.jsonl", 6),
    "glue_mrpc": ("glue_mrpc.jsonl", 5),
    "glue_rte": ("glue_rte", 6),
    "gsm8k": ("gsm8k.jsonl", 5),
}


VADER = ("vader_intensity", "vader_polarity")


def test_registry_has_every_task():
    assert set(TASKS) == {"chatterbot_topic", "chatterbot_qa", "bigbench", *HUB, *VADER}
    assert TASKS["glue_cola"].metrics == ("accuracy", "mcc")
    assert TASKS["glue_mrpc"].metrics == ("accuracy", "f1")
    assert TASKS["gsm8k"].metrics == ("accuracy",) and not TASKS["gsm8k"].multiple_choice


@pytest.mark.parametrize("task", sorted(HUB))
def test_hub_fixture_loads(task):
    path, n = HUB[task]
    examples = load_task(task, path=str(FIXTURES / path))
    assert len(examples) == n
    spec = get_task(task)
    for ex in examples:
        assert ex.output and ex.answer
        # the regex reads the target (through the one answer reader)
        assert is_correct(extract_answer(ex.output, spec.answer_pattern), ex.answer), (
            ex.output,
            ex.answer,
        )
        if spec.multiple_choice:
            assert ex.options[ex.label] == ex.output


def test_scienceqa_prompt_and_target():
    ex = load_task("scienceqa", path=str(FIXTURES / "scienceqa.jsonl"))
    assert ex[0].instruction == (
        "Context: N/A\nQuestion: Which word comes first in alphabetical order?\nOptions: (A) bulb (B) bake"
    )
    assert (ex[0].output, ex[0].answer, ex[0].label) == ("The answer is B.", "B", 1)
    assert ex[0].options == ("The answer is A.", "The answer is B.")
    assert ex[2].instruction.startswith("Context: Select the better estimate.\nQuestion:")


def test_letter_choice_tasks():
    csqa = load_task("commonsense_qa", path=str(FIXTURES / "commonsense_qa.jsonl"))
    assert [e.answer for e in csqa] == ["A", "B", "C", "D", "E"]
    assert csqa[0].instruction.endswith(
        "(A) refrigerator (B) garage (C) mailbox (D) bathtub (E) garden"
    )
    obqa = load_task("openbookqa", path=str(FIXTURES / "openbookqa.jsonl"))
    assert obqa[0].instruction.startswith(
        "Question: Plants need sunlight in order to\nOptions: (A)"
    )
    assert len(obqa[0].options) == 4 and obqa[0].output == "The answer is D."


def test_glue_words_follow_glue_labels():
    cola = load_task("glue_cola", path=str(FIXTURES / "glue_cola.jsonl"))
    assert cola[0].options == ("unacceptable", "acceptable") and cola[2].output == "unacceptable"
    mrpc = load_task("glue_mrpc", path=str(FIXTURES / "glue_mrpc.jsonl"))
    assert mrpc[0].input.startswith("Sentence 1: ") and "\nSentence 2: " in mrpc[0].input
    assert (mrpc[0].output, mrpc[0].label) == ("equivalent", 1)
    rte = load_task("glue_rte", path=str(FIXTURES / "glue_rte"))
    assert rte[0].options == ("entailment", "not_entailment") and rte[0].output == "not_entailment"
    assert len(load_task("glue_rte", "validation", path=str(FIXTURES / "glue_rte"))) == 3
    assert load_task("glue_rte", "test", path=str(FIXTURES / "glue_rte")) == []  # label -1 rows


def test_gsm8k_target():
    ex = load_task("gsm8k", path=str(FIXTURES / "gsm8k.jsonl"))
    assert ex[0].output == (
        "On Tuesday she picked 36/2 = 18 strawberries.\n"
        "Altogether she picked 36+18 = 54 strawberries.\nThe answer is 54."
    )
    assert [e.answer for e in ex] == ["54", "10", "1200", "3", "120"]
    kept = load_task("gsm8k", path=str(FIXTURES / "gsm8k.jsonl"), keep_calculator=True)
    assert "<<36/2=18>>" in kept[0].output


@pytest.mark.parametrize(
    "task, text, expected",
    [
        ("scienceqa", "The answer is (C).", "C"),
        ("scienceqa", "the answer is a dog", None),
        ("commonsense_qa", "I think the answer is E.", "E"),
        ("glue_rte", "Not_entailment.", "not_entailment"),
        ("glue_rte", "entailment", "entailment"),
        ("glue_cola", "unacceptable", "unacceptable"),
        ("glue_mrpc", "They are equivalent.", "equivalent"),
        ("gsm8k", "5 + 7 = 12\nThe answer is 1,212.", "1212"),
        ("gsm8k", "The answer is $-3.5", "-3.5"),
        ("gsm8k", "no number here", None),
        ("chatterbot_topic", "  Trivia<|im_end|>", "trivia"),
        ("chatterbot_qa", "  Python.  \n", "Python."),
        ("bigbench", " Negative\n", "negative"),
    ],
)
def test_answer_patterns(task, text, expected):
    # compared after the one normalisation every answer and gold goes through
    assert extract_answer(text, get_task(task).answer_pattern) == normalize_answer(expected)


def test_chatterbot_topic_defaults():
    examples = load_task("chatterbot_topic")
    topics = (
        "ai",
        "coding",
        "conversations",
        "emotion",
        "literature",
        "movies",
        "psychology",
        "trivia",
    )
    assert examples[0].options == topics
    assert {e.output for e in examples} == set(topics)
    questions = [e.input for e in examples]
    assert len(questions) == len(set(questions)) == 601  # distinct, ambiguous ones dropped
    assert all(e.options[e.label] == e.output == e.answer for e in examples)
    assert "Topics: ai, coding," in examples[0].instruction


def test_chatterbot_topic_choice_and_cap():
    examples = load_task("chatterbot_topic", topics=["greetings", "food"], max_per_topic=5)
    assert examples[0].options == ("greetings", "food")
    assert len(examples) == 10
    with pytest.raises(ValueError, match="unknown ChatterBot topics \\['cooking'\\].*available"):
        load_task("chatterbot_topic", topics=["cooking"])


def test_chatterbot_qa():
    examples = load_task("chatterbot_qa", topics=["ai"])
    assert examples[0].instruction == "What is AI?"
    assert examples[0].output.startswith("Artificial Intelligence is the branch of engineering")
    assert len({e.instruction for e in examples}) == len(examples)
    assert not examples[0].options and examples[0].label is None


def test_chatterbot_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ChatterBot"):
        load_task("chatterbot_topic", data_dir=str(tmp_path))


def test_single_pool_sources_have_no_test_split():
    with pytest.raises(ValueError, match="set test_split/val_split to null"):
        load_task("chatterbot_qa", "test")


def test_vader_classes_on_a_fixture_lexicon():
    # tests/fixtures/vader_lexicon.txt: six made-up rows in the lexicon's format
    # (token, mean, std, ratings); classes by hand from the thresholds -2, 0, 2
    intensity = load_task("vader_intensity", data_dir=str(FIXTURES))
    assert [(e.input, e.output) for e in intensity] == [
        ("zesty", "very positive"),  # 2.5 >= 2
        ("meh", "negative"),  # -2 < -0.4 < 0
        ("dreadful", "very negative"),  # -3.2 <= -2
        ("fine", "positive"),  # 0 is not negative
        (":-/", "very negative"),  # -2 is <= -2
        ("okayish", "positive"),  # 1.9 < 2
    ]
    ex = intensity[0]
    assert ex.options == ("very negative", "negative", "positive", "very positive")
    assert ex.options[ex.label] == ex.answer == ex.output
    assert "Answer with one of: very negative, negative, positive, very positive." in ex.instruction
    polarity = load_task("vader_polarity", data_dir=str(FIXTURES))
    assert [e.output for e in polarity] == [
        "positive",
        "negative",
        "negative",
        "positive",  # a mean of exactly 0 counts as positive
        "negative",
        "positive",
    ]
    # min_agreement keeps tokens whose raters' std is at most the value
    agreed = load_task("vader_polarity", data_dir=str(FIXTURES), min_agreement=0.5)
    assert [e.input for e in agreed] == ["zesty", "dreadful", ":-/", "okayish"]


def test_vader_errors_say_what_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_task("vader_intensity", data_dir=str(tmp_path))
    (tmp_path / "vader_lexicon.txt").write_text("good 1.5\n")  # no tabs
    with pytest.raises(ValueError, match="vader_lexicon.txt:1: expected 'token<TAB>mean<TAB>std"):
        load_task("vader_polarity", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="set test_split/val_split to null"):
        load_task("vader_intensity", "test", data_dir=str(FIXTURES))


def test_errors_say_what_to_fix(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'imdb'; valid tasks: \\['bigbench'"):
        load_task("imdb")
    with pytest.raises(FileNotFoundError, match="not found: .*missing.jsonl"):
        load_task("gsm8k", path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(TypeError, match="no option\\(s\\) \\['topic'\\]; its task_kwargs"):
        load_task("chatterbot_topic", topic="ai")
    with pytest.raises(ValueError, match="no split 'dev'.*'validation'"):
        load_task("glue_rte", "dev", path=str(FIXTURES / "glue_rte"))
    bad = tmp_path / "rows.txt"
    bad.write_text(json.dumps({"question": "q"}))
    with pytest.raises(ValueError, match="unsupported file type"):
        load_task("gsm8k", path=str(bad))
