"""Evaluation in the paper's style: greedy generation + answer regex, or option log-likelihood.

from guilomo.eval import EvalSettings, evaluate
evaluate(model, tokenizer, prompts, golds, options=..., settings=EvalSettings(mode="loglik"))
"""

from guilomo.eval.answer import (
    extract_answer,
    is_correct,
    normalize,
    normalize_answer,
    normalize_number,
    option_index,
    option_keys,
)
from guilomo.eval.evaluator import EvalSettings, evaluate
from guilomo.eval.generate import generate
from guilomo.eval.metrics import Metrics, compute_metrics
from guilomo.eval.scoring import OptionScores, score_options

__all__ = [
    "EvalSettings",
    "Metrics",
    "OptionScores",
    "compute_metrics",
    "evaluate",
    "extract_answer",
    "generate",
    "is_correct",
    "normalize",
    "normalize_answer",
    "normalize_number",
    "option_index",
    "option_keys",
    "score_options",
]
