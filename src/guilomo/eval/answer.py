"""Reading the answer out of a generation, and normalising answers for comparison.

The one answer-reading path: every task names its regex (``TaskSpec.answer_pattern``),
and ``extract_answer(text, pattern)`` returns the normalised first group (the whole
match if the regex has no group), or ``None`` when the text does not contain one (a
malformed answer, which counts as wrong). The regex is compiled as given (add
``(?i)`` for case-insensitivity).

Normalisation (:func:`normalize_answer`, applied to predictions and gold answers
alike): an answer that reads as a number ("-1,234.50", "$12", "3.") becomes its
canonical decimal string (:func:`normalize_number`: no commas, "$", "+" or trailing
zeros); any other answer is lower-cased, stripped of punctuation and whitespace-
collapsed (:func:`normalize`).
"""

from __future__ import annotations

import re
import string
from decimal import Decimal, InvalidOperation

_NUM_STRICT = r"[-+]?\$?\s?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"

_IS_NUMBER = re.compile(rf"\s*{_NUM_STRICT}\.?\s*")

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str | None) -> str | None:
    """Lower case, no punctuation, single spaces; ``None`` stays ``None``."""
    if text is None:
        return None
    return " ".join(text.lower().translate(_PUNCT).split())


def normalize_number(text: str | None) -> str | None:
    """Canonical decimal string of a number ("$1,234.50" -> "1234.5", "-0.0" -> "0"), or ``None``."""
    if text is None:
        return None
    t = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        d = Decimal(t)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def normalize_answer(text: str | None) -> str | None:
    """A number's canonical form if ``text`` reads as a number, else :func:`normalize`;
    ``None`` for ``None`` or an empty result."""
    if text is None:
        return None
    if _IS_NUMBER.fullmatch(text):
        num = normalize_number(text)
        if num is not None:
            return num
    return normalize(text) or None


def extract_answer(text: str | None, pattern: str) -> str | None:
    """The normalised answer the regex ``pattern`` finds in ``text`` (its first group, or
    the whole match if it has none) at its first match, else ``None``."""
    if not text:
        return None
    rx = re.compile(pattern)
    m = rx.search(text)
    if m is None:
        return None
    raw = m.group(1) if rx.groups else m.group(0)
    return None if raw is None else normalize_answer(raw)


def is_correct(prediction: str | None, gold: str | None) -> bool:
    """A malformed (``None``) prediction is wrong; otherwise compare normalised forms
    (``prediction`` as returned by :func:`extract_answer`, ``gold`` raw or normalised)."""
    if prediction is None or gold is None:
        return False
    return prediction == normalize_answer(gold)


def option_keys(options: list[str], pattern: str) -> list[str | None]:
    """What a prediction is compared with for each option: the answer ``pattern`` reads
    from the option itself ("The answer is B." -> "b") when it reads one from every
    option and they are distinct, else the normalised option text."""
    keys = [extract_answer(o, pattern) for o in options]
    if all(k is not None for k in keys) and len(set(keys)) == len(keys):
        return keys
    return [normalize_answer(o) for o in options]


def option_index(answer: str | None, keys: list[str | None], letters: bool = False) -> int | None:
    """Index of the key (see :func:`option_keys`) equal to the normalised ``answer``, else
    ``None``.

    With ``letters``, a one-letter answer that equals no key picks the option at its
    position (``"b"`` -> 1).
    """
    if answer is None:
        return None
    norm = normalize_answer(answer)
    if norm is None:
        return None
    normed = [normalize_answer(k) for k in keys]
    if norm in normed:
        return normed.index(norm)
    if letters and len(norm) == 1 and "a" <= norm <= "z" and ord(norm) - ord("a") < len(keys):
        return ord(norm) - ord("a")
    return None
