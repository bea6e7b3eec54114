"""One call to score a model on a list of prompts, in the paper's style or by likelihood.

``mode="generate"``: greedy generation, the answer read with ``answer_pattern``
(:mod:`guilomo.eval.answer`); a missing/malformed answer is wrong.
``mode="loglik"``: every option scored by ``sum log p(option | prompt)`` and the
best one taken (``normalize`` "tokens"/"chars" for the length-normalised variant).

With ``options`` (multiple choice / classification) the classes are the option
positions: the target is ``labels[i]`` when given, else the option that equals the
normalised gold answer; a generated answer is mapped to the option it equals after
normalisation, where an option is known by the answer the pattern reads from it
when that is distinct per option ("The answer is B." -> "b"; "not equivalent" ->
"not" for ``first_word``; :func:`~guilomo.eval.answer.option_keys`), and for the
``choice`` preset a letter also picks the option at its position. Without ``options`` (free-form,
e.g. GSM8K) only generation and ``accuracy`` (exact match of normalised answers)
apply. Metrics: :mod:`guilomo.eval.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from guilomo.eval.answer import extract_answer, is_correct, option_index, option_keys
from guilomo.eval.generate import generate
from guilomo.eval.metrics import Metrics
from guilomo.eval.scoring import score_options

MODES = ("generate", "loglik")


def _target(i: int, gold, options: Sequence[str], labels, answer_pattern: str) -> int:
    if labels is not None and labels[i] is not None:
        label = int(labels[i])
        if not 0 <= label < len(options):
            raise ValueError(f"example {i}: label {label} is outside its {len(options)} options")
        return label
    idx = option_index(gold, list(options), letters=answer_pattern == "choice")
    if idx is None:
        idx = option_index(gold, option_keys(list(options), answer_pattern), letters=True)
    if idx is None:
        raise ValueError(
            f"example {i}: gold answer {gold!r} is none of its options {list(options)}"
        )
    return idx


def evaluate(
    model,
    tokenizer,
    prompts: Sequence[str],
    golds: Sequence[str],
    options: Sequence[Sequence[str]] | None = None,
    labels: Sequence[int | None] | None = None,
    answer_pattern: str = "choice",
    mode: str = "generate",
    metrics: Sequence[str] = ("accuracy",),
    batch_size: int = 8,
    max_new_tokens: int = 32,
    normalize_scores: str = "none",
    padding_side: str = "right",
    positive: int = 1,
    stop: Sequence[str] | None = None,
    max_length: int | None = None,
    return_predictions: bool = False,
    share_prompt: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict:
    """Metrics of ``model`` on the prompts: ``{metric: value, ..., "n", "invalid", "mode"}``.

    ``invalid`` counts predictions that could not be read (always 0 for ``loglik``).
    ``max_length`` caps prompt (+ option) tokens, keeping the end of the prompt.
    With ``return_predictions`` the result also holds ``predictions`` (option index or
    normalised answer, ``None`` if unreadable), ``targets`` and, for ``generate``,
    ``outputs`` (the generated texts). ``progress`` wraps the loop over batches
    (a progress display, :func:`guilomo.utils.progress.eval_progress`).
    """
    if mode not in MODES:
        raise ValueError(f"mode '{mode}' is not one of {list(MODES)}")
    prompts, golds = list(prompts), list(golds)
    if len(prompts) != len(golds):
        raise ValueError(f"{len(prompts)} prompts but {len(golds)} gold answers")
    if options is not None and len(options) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    if labels is not None and len(labels) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
    if options is None and mode == "loglik":
        raise ValueError("mode='loglik' needs options; free-form tasks use mode='generate'")
    if options is None and any(m != "accuracy" for m in metrics):
        raise ValueError(f"free-form tasks only support accuracy, not {list(metrics)}")

    outputs: list[str] | None = None
    if mode == "generate":
        outputs = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens,
            batch_size,
            stop=stop,
            max_prompt_tokens=max_length,
            progress=progress,
        )

    if options is None:
        answers = [extract_answer(o, answer_pattern) for o in outputs]
        preds = [
            None if a is None else (0 if is_correct(a, g) else 1)
            for a, g in zip(answers, golds, strict=True)
        ]
        targets = [0] * len(prompts)
        tracker = Metrics(["accuracy"], num_classes=2)
        shown = answers
    else:
        options = [list(o) for o in options]
        targets = [
            _target(i, g, o, labels, answer_pattern)
            for i, (g, o) in enumerate(zip(golds, options, strict=True))
        ]
        if mode == "loglik":
            scores = score_options(
                model,
                tokenizer,
                prompts,
                options,
                batch_size,
                padding_side,
                max_length,
                share_prompt=share_prompt,
                progress=progress,
            )
            preds = scores.predictions(normalize_scores)
        else:
            letters = answer_pattern == "choice"
            preds = [
                option_index(
                    extract_answer(out, answer_pattern), option_keys(o, answer_pattern), letters
                )
                for out, o in zip(outputs, options, strict=True)
            ]
        num_classes = max(2, max(len(o) for o in options)) if options else 2
        tracker = Metrics(metrics, num_classes=num_classes, positive=positive)
        shown = preds
    tracker.update(preds, targets)
    result: dict = {
        **tracker.compute(),
        "n": len(prompts),
        "invalid": tracker.invalid,
        "mode": mode,
    }
    if return_predictions:
        result["predictions"] = shown
        result["targets"] = golds if options is None else targets
        if outputs is not None:
            result["outputs"] = outputs
    return result
