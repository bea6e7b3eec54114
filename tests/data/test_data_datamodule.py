"""TaskDataModule: prompts, label masking, padding, splits and error messages (tokenizer only)."""

from pathlib import Path

import pytest
import torch

from guilomo.data import get_template

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = {"val_size": 1, "test_size": 1}

CASES = {  # name: (task, task_kwargs, extra datamodule args, text every prompt contains)
    "chatterbot_topic": ("chatterbot_topic", {}, {}, "Which topic is this question about?"),
    "chatterbot_qa": ("chatterbot_qa", {"topics": ["ai"]}, {}, "\n"),
    "scienceqa": (
        "scienceqa",
        {"path": str(FIXTURES / "scienceqa.jsonl")},
        TINY,
        "\nOptions: (A) ",
    ),
    "commonsense_qa": (
        "commonsense_qa",
        {"path": str(FIXTURES / "commonsense_qa.jsonl")},
        TINY,
        "Question: ",
    ),
    "openbookqa": ("openbookqa", {"path": str(FIXTURES / "openbookqa.jsonl")}, TINY, "Question: "),
    "glue_cola": (
        "glue_cola",
        {"path": str(FIXTURES / "glue_cola.jsonl")},
        TINY,
        "grammatically acceptable",
    ),
    "glue_mrpc": ("glue_mrpc", {"path": str(FIXTURES / "glue_mrpc.jsonl")}, TINY, "Sentence 2: "),
    "glue_rte": ("glue_rte", {"path": str(FIXTURES / "glue_rte")}, TINY, "Hypothesis: "),
    "gsm8k": ("gsm8k", {"path": str(FIXTURES / "gsm8k.jsonl")}, TINY, "How "),
}


def rows(batch):
    """Per row: (prompt ids, target ids, padding ids) split by the labels / attention mask."""
    out = []
    for ids, mask, labels in zip(
        batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
    ):
        real = mask.bool()
        target = labels != -100
        out.append((ids[real & ~target].tolist(), ids[target].tolist(), ids[~real].tolist()))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("template", ["alpaca", "plain"])
def test_batches_hold_prompt_then_target(make_dm, tokenizer, name, template):
    task, kwargs, extra, snippet = CASES[name]
    dm = make_dm(task, task_kwargs=kwargs, template=template, eval_batch_size=4, **extra)
    assert dm.spec.name == task
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for ex, (prompt, target, pad) in zip(dm.val_examples, rows(batch), strict=False):
        text = get_template(template).render(ex)
        assert snippet in text and ex.instruction in text
        assert tokenizer.decode(prompt) == dm.prompt_text(ex) == text
        assert target[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(target[:-1]) == ex.output
        assert all(t == dm.pad_id for t in pad)
    # right padding: every row starts with real tokens
    assert batch["attention_mask"][:, 0].all()


def test_train_on_inputs_keeps_prompt_labels(make_dm):
    dm = make_dm("chatterbot_topic", train_on_inputs=True, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    real = batch["attention_mask"].bool()
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])
    assert (batch["labels"][~real] == -100).all()
    masked = make_dm("chatterbot_topic", batch_size=4)
    n_target = (next(iter(masked.train_dataloader()))["labels"] != -100).sum(1)
    assert (n_target < batch["attention_mask"].sum(1).min()).all()  # only the short target


def test_test_loader_left_pads_prompts_with_index(make_dm, tokenizer):
    dm = make_dm("chatterbot_topic", eval_batch_size=8)
    seen = []
    for batch in dm.test_dataloader():
        assert set(batch) == {"input_ids", "attention_mask", "index"}
        assert batch["attention_mask"][:, -1].all()  # left padding: prompts end at the right edge
        for ids, mask, i in zip(
            batch["input_ids"], batch["attention_mask"], batch["index"], strict=True
        ):
            ex = dm.test_examples[int(i)]
            assert tokenizer.decode(ids[mask.bool()]) == dm.prompt_text(ex)
            seen.append(int(i))
    assert seen == list(range(len(dm.test_examples)))
    assert dm.encode_target("ai") == tokenizer("ai", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    val = next(iter(dm.prompt_dataloader(dm.val_examples, batch_size=3)))
    assert val["index"].tolist() == [0, 1, 2]


def test_splits_deterministic_disjoint_and_sized(make_dm):
    a = make_dm("chatterbot_topic", val_size=0.1, test_size=50, seed=3)
    b = make_dm("chatterbot_topic", val_size=0.1, test_size=50, seed=3)
    c = make_dm("chatterbot_topic", val_size=0.1, test_size=50, seed=4)
    assert a.test_examples == b.test_examples and a.val_examples == b.val_examples
    assert a.train_examples == b.train_examples
    assert a.test_examples != c.test_examples
    train, val, test = (
        set(e.input for e in s) for s in (a.train_examples, a.val_examples, a.test_examples)
    )
    assert not (train & val or train & test or val & test)
    assert (len(test), len(val), len(train)) == (50, 60, 601 - 110)
    small = make_dm(
        "chatterbot_topic",
        val_size=0.1,
        test_size=50,
        max_train_examples=32,
        max_test_examples=10,
        seed=3,
    )
    assert small.train_examples == a.train_examples[:32] and small.val_examples == a.val_examples
    assert small.test_examples == a.test_examples[:10]


def test_train_batches_reproducible(make_dm):
    first = [
        next(iter(make_dm("chatterbot_topic", seed=7).train_dataloader()))["input_ids"]
        for _ in range(2)
    ]
    assert torch.equal(*first)


def test_source_splits(make_dm):
    dm = make_dm(
        "glue_rte",
        task_kwargs={"path": str(FIXTURES / "glue_rte")},
        test_split="validation",
        val_size=2,
    )
    assert len(dm.test_examples) == 3 and len(dm.val_examples) == 2 and len(dm.train_examples) == 4
    assert dm.test_examples[0].input.startswith("Premise: The singer cancelled")
    both = make_dm(
        "glue_rte",
        task_kwargs={"path": str(FIXTURES / "glue_rte")},
        val_split="validation",
        test_size=2,
    )
    assert (
        len(both.val_examples) == 3
        and len(both.test_examples) == 2
        and len(both.train_examples) == 4
    )


def test_zero_sized_val_gives_no_val_batches(make_dm):
    dm = make_dm("chatterbot_topic", val_size=0)
    assert dm.val_examples == [] and dm.val_dataloader() == []


def test_unknown_task(tokenizer):
    from guilomo.data import TaskDataModule

    with pytest.raises(ValueError, match="unknown task 'sst2'; valid tasks: .*'chatterbot_topic'"):
        TaskDataModule("sst2", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        TaskDataModule("chatterbot_topic")


def test_missing_file(make_dm, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: .*nope.jsonl"):
        make_dm("glue_cola", task_kwargs={"path": str(tmp_path / "nope.jsonl")})


def test_empty_splits(make_dm, tmp_path):
    with pytest.raises(
        ValueError, match="no training examples left out of 601 after test_size=300, val_size=301"
    ):
        make_dm("chatterbot_topic", test_size=300, val_size=301)
    with pytest.raises(ValueError, match="val_size=700 is not a count in \\[0, 601\\]"):
        make_dm("chatterbot_topic", val_size=700)
    with pytest.raises(ValueError, match="val_size=0.0001 leaves an empty split"):
        make_dm("chatterbot_topic", val_size=0.0001)
    unanswered = tmp_path / "csqa.jsonl"  # the filter drops every row (no answerKey)
    unanswered.write_text((FIXTURES / "commonsense_qa.jsonl").read_text().splitlines()[-1] + "\n")
    with pytest.raises(
        ValueError, match="split 'train' has no examples .*a filter removed every row"
    ):
        make_dm("commonsense_qa", task_kwargs={"path": str(unanswered)})


def test_cutoff_shorter_than_prompt(make_dm):
    with pytest.raises(
        ValueError, match="do not fit in cutoff_len=32 tokens .*set cutoff_len >= \\d+"
    ):
        make_dm("chatterbot_topic", cutoff_len=32)
    dm = make_dm("chatterbot_topic", cutoff_len=32, truncate=True, eval_batch_size=64)
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[1] <= 32
    target = batch["labels"][0][batch["labels"][0] != -100]
    assert target[-1] == dm.tokenizer.eos_token_id  # prompt cut from the left, target whole
    assert max(len(d["input_ids"]) for d in dm.test_data) <= 32


def test_evaluation_scores_the_test_loaders_prompts(make_dm, monkeypatch):
    """One test-prompt path: evaluation gets the prompts test_dataloader batches (here cut
    to cutoff_len from the left, as in training), not a second tokenisation of the text."""
    from omegaconf import OmegaConf

    import guilomo.finetune.evaluation as ev

    dm = make_dm("chatterbot_topic", cutoff_len=32, truncate=True, eval_batch_size=64)
    batch = next(iter(dm.test_dataloader()))
    pairs = zip(batch["input_ids"], batch["attention_mask"], strict=True)
    loader_prompts = [ids[mask.bool()].tolist() for ids, mask in pairs]
    seen = {}

    def fake_evaluate(
        model, tokenizer, prompts, golds, options=None, labels=None, settings=None, **_
    ):
        seen.update(prompts=prompts, golds=golds, settings=settings)
        return {"accuracy": 0.0, "n": len(prompts), "invalid": 0, "mode": settings.mode}

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    cfg = OmegaConf.create(
        {"mode": "loglik", "batch_size": 4, "max_new_tokens": 4, "option_eos": True, "limit": 5}
    )
    ev.evaluate_datamodule(torch.nn.Linear(1, 1), dm.tokenizer, dm, cfg)
    assert seen["prompts"] == loader_prompts[:5]
    assert seen["golds"] == [e.answer for e in dm.test_examples[:5]]
    assert seen["settings"].answer_pattern == dm.spec.answer_pattern
    full = [dm.tokenizer(dm.prompt_text(e))["input_ids"] for e in dm.test_examples[:5]]
    assert any(len(p) < len(f) for p, f in zip(seen["prompts"], full, strict=True))
