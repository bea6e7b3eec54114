"""One call to score a model on a list of prompts, in the paper's style or by likelihood.

``evaluate(model, tokenizer, prompts, golds, options, labels, settings)``; the
prompts are texts or token-id lists (the pipeline passes the datamodule's test
prompts, tokenised once by the datamodule), ``settings`` an :class:`EvalSettings`.

``mode="generate"``: greedy generation, the answer read with the task's
``answer_pattern`` (:func:`~guilomo.eval.answer.extract_answer`); a missing or
malformed answer is wrong. ``mode="loglik"``: every option scored by
``sum log p(option | prompt)`` (the prompt's KV cache shared by its options) and the
best one taken. ``mode="loss"``: the held-out loss alone (below), for any task: no
decoding, so it is the cheap choice when only the loss is compared.

With ``options`` (multiple choice / classification) the classes are the option
positions: the target is ``labels[i]`` when given, else the option that equals the
normalised gold answer; a generated answer is mapped to the option it equals after
normalisation, where an option is known by the answer the pattern reads from it
when that is distinct per option ("The answer is B." -> "b";
:func:`~guilomo.eval.answer.option_keys`). Without ``options`` (free-form, e.g.
GSM8K) only generation and ``accuracy`` (exact match of normalised answers) apply.
Metrics: :mod:`guilomo.eval.metrics`. :func:`check_eval_config` checks a run's ``eval``
config before any weights load.

Held-out loss. Every result also has ``nll``: the negative log-likelihood of the gold
answer's tokens given the prompt, summed over all examples and divided by the number of
those tokens (nats per token; lower is better). For option tasks the gold answer is the
target option as scored (``loglik`` reuses its score; ``generate`` scores it once more);
for free-form tasks it is the gold answer text (plus whatever suffix the caller gives in
``gold_suffix``, e.g. eos, as trained). Unlike accuracy it moves with every example's
probability, so it resolves differences far below one example. With it comes
``token_accuracy``: the share of those gold tokens that are the model's greedy choice
given the prompt and the gold tokens before them (teacher forcing), the accuracy that a
free-form answer can be compared on in ``loss`` mode, where no answer is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from guilomo.eval.answer import extract_answer, is_correct, option_index, option_keys
from guilomo.eval.generate import generate
from guilomo.eval.metrics import Metrics, NllMeter
from guilomo.eval.scoring import score_options
from guilomo.utils.checks import check_bool, check_choice, check_int, check_known, get

MODES = ("generate", "loglik", "loss")
# the keys of a run's eval config (conf/train.yaml)
EVAL_KEYS = ("mode", "zero_shot", "batch_size", "max_new_tokens", "option_eos", "limit", "progress")
WHOLE_OUTPUT = r"(?s)^\s*(.*?)\s*$"  # the answer is the whole (stripped) output


@dataclass(frozen=True)
class EvalSettings:
    """How :func:`evaluate` scores: the run's ``eval`` settings and the task's answer rules.

    Args:
        mode: "generate" (greedy + ``answer_pattern``), "loglik" (option likelihood) or
            "loss" (only the held-out loss ``nll``).
        answer_pattern: regex whose first group is the answer (the task's
            ``TaskSpec.answer_pattern``); default: the whole output.
        metrics: names from :mod:`guilomo.eval.metrics` (the task's ``metrics``).
        batch_size: prompts per forward / generate call.
        max_new_tokens: generation length.
    """

    mode: str = "generate"
    answer_pattern: str = WHOLE_OUTPUT
    metrics: tuple[str, ...] = ("accuracy",)
    batch_size: int = 8
    max_new_tokens: int = 32

    def __post_init__(self):
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.mode not in MODES:
            raise ValueError(f"mode '{self.mode}' is not one of {list(MODES)}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("eval batch_size and max_new_tokens must be >= 1")


def check_eval_config(cfg) -> None:
    """The run's ``eval.*`` values (a ConfigError naming the key and the fix)."""
    check_known("eval", list(get(cfg, "eval", {}) or {}), EVAL_KEYS)
    check_choice("eval.mode", get(cfg, "eval.mode"), MODES)
    check_int("eval.batch_size", get(cfg, "eval.batch_size"), 1)
    check_int("eval.max_new_tokens", get(cfg, "eval.max_new_tokens"), 1)
    check_int("eval.limit", get(cfg, "eval.limit", None), 1, none_ok=True)
    for key in ("eval.zero_shot", "eval.option_eos"):
        check_bool(key, get(cfg, key, True))


def _target(i: int, gold, options: Sequence[str], labels, answer_pattern: str) -> int:
    if labels is not None and labels[i] is not None:
        label = int(labels[i])
        if not 0 <= label < len(options):
            raise ValueError(f"example {i}: label {label} is outside its {len(options)} options")
        return label
    idx = option_index(gold, list(options))
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
    prompts: Sequence[str | Sequence[int]],
    golds: Sequence[str],
    options: Sequence[Sequence[str]] | None = None,
    labels: Sequence[int | None] | None = None,
    settings: EvalSettings = EvalSettings(),
    return_predictions: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
    num_classes: int | None = None,
    gold_suffix: str = "",
) -> dict:
    """Metrics of ``model`` on the prompts: ``{metric: value, ..., "n", "invalid", "mode"}``.

    ``invalid`` counts predictions that could not be read (always 0 for ``loglik``).
    With ``return_predictions`` the result also holds ``predictions`` (option index or
    normalised answer, ``None`` if unreadable), ``targets`` and, for ``generate``,
    ``outputs`` (the generated texts). ``progress`` wraps the loop over batches
    (a progress display, :func:`guilomo.utils.progress.eval_progress`). ``num_classes``
    (default: the most options of any prompt) must be the same on every process of a
    data-parallel evaluation, where each process passes its shard of the prompts and the
    metrics, ``n`` and ``invalid`` are those of all shards (:class:`~guilomo.eval.metrics.Metrics`).
    """
    s = settings
    prompts, golds = list(prompts), list(golds)
    if len(prompts) != len(golds):
        raise ValueError(f"{len(prompts)} prompts but {len(golds)} gold answers")
    if options is not None and len(options) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    if labels is not None and len(labels) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
    if options is None and s.mode == "loglik":  # "loss" works without options
        raise ValueError("mode='loglik' needs options; free-form tasks use mode='generate'")
    if options is None and any(m != "accuracy" for m in s.metrics):
        raise ValueError(f"free-form tasks only support accuracy, not {list(s.metrics)}")

    outputs: list[str] | None = None
    if s.mode == "generate":
        outputs = generate(
            model, tokenizer, prompts, s.max_new_tokens, s.batch_size, progress=progress
        )
    scores = None
    if options is None:
        targets = [0] * len(prompts)
        gold_texts = [g + gold_suffix for g in golds]
    else:
        options = [list(o) for o in options]
        targets = [
            _target(i, g, o, labels, s.answer_pattern)
            for i, (g, o) in enumerate(zip(golds, options, strict=True))
        ]
        gold_texts = [o[t] for o, t in zip(options, targets, strict=True)]
        if s.mode == "loglik":  # every option scored: the gold one's score is the loss
            scores = score_options(
                model,
                tokenizer,
                prompts,
                options,
                s.batch_size,
                share_prompt=True,
                progress=progress,
            )
    nll = NllMeter()
    if scores is not None:
        nll.update(
            [-scores.logprobs[i][t] for i, t in enumerate(targets)],
            [scores.num_tokens[i][t] for i, t in enumerate(targets)],
            None if scores.hits is None else [scores.hits[i][t] for i, t in enumerate(targets)],
        )
    else:
        gold = score_options(
            model,
            tokenizer,
            prompts,
            [[t] for t in gold_texts],
            s.batch_size,
            share_prompt=True,
            progress=progress if s.mode == "loss" else None,
        )
        nll.update(
            [-lp[0] for lp in gold.logprobs],
            [n[0] for n in gold.num_tokens],
            None if gold.hits is None else [h[0] for h in gold.hits],
        )
    held_out = {"nll": nll.compute()}
    token_accuracy = nll.token_accuracy()  # computed once: each compute syncs processes
    if token_accuracy is not None:
        held_out["token_accuracy"] = token_accuracy
    if s.mode == "loss":  # the held-out loss alone: no decoding, no predictions
        return {**held_out, "n": nll.examples(), "invalid": 0, "mode": s.mode}

    if options is None:
        answers = [extract_answer(o, s.answer_pattern) for o in outputs]
        preds = [
            None if a is None else (0 if is_correct(a, g) else 1)
            for a, g in zip(answers, golds, strict=True)
        ]
        tracker = Metrics(["accuracy"], num_classes=2)
        shown = answers
    else:
        if s.mode == "loglik":
            preds = scores.predictions()
        else:
            preds = [
                option_index(
                    extract_answer(out, s.answer_pattern), option_keys(o, s.answer_pattern)
                )
                for out, o in zip(outputs, options, strict=True)
            ]
        if num_classes is None:
            num_classes = max(2, max(len(o) for o in options)) if options else 2
        tracker = Metrics(s.metrics, num_classes=num_classes)
        shown = preds
    tracker.update(preds, targets)
    result: dict = {**tracker.compute(), **held_out, **tracker.totals(), "mode": s.mode}
    if return_predictions:
        result["predictions"] = shown
        result["targets"] = golds if options is None else targets
        if outputs is not None:
            result["outputs"] = outputs
    return result
