"""Log-likelihood scoring of answer options: ``sum log p(option tokens | prompt)``.

Tokenisation. The prompt is tokenised as the tokenizer does by default (special
tokens included, e.g. a BOS; a prompt given as token ids is used as it is), the option separately without special tokens, and
the two id lists are concatenated. So the option tokens are exactly the option's
own tokens, whatever the tokenizer would merge across the boundary of
``prompt + option``; put any separating space in the option (``" B"``) or at the
end of the prompt, as the prompt format requires.

Batching. All (prompt, option) pairs are flattened, sorted by length, padded on
``padding_side`` ("right" or "left") with an attention mask and explicit
``position_ids`` (``cumsum(mask) - 1``), so both paddings give the same scores as
scoring each pair alone. Only the positions that predict option tokens are sent
through the LM head when the model's ``forward`` takes ``logits_to_keep``. Log-
softmax is taken in fp32.

:class:`OptionScores` holds the summed log-probabilities, the option lengths in
tokens and characters, and ``hits``: how many of the option's tokens are the model's
greedy (argmax, first on ties) choice given everything before them, i.e. teacher-forced
token accuracy, a far finer "accuracy" than exact match for a free-form answer; ``predictions(normalize=...)`` picks the argmax of the sum
(``"none"``), of the mean per token (``"tokens"``) or per character (``"chars"``).
Ties go to the first option.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from guilomo.eval.generate import pad_id_of, prompt_ids

NORMALIZATIONS = ("none", "tokens", "chars")


@dataclass
class OptionScores:
    """Per example, per option: summed log-prob, token count, character count and greedy
    hits (``None`` where not counted)."""

    logprobs: list[list[float]]
    num_tokens: list[list[int]]
    num_chars: list[list[int]]
    hits: list[list[int]] | None = None

    def normalized(self, normalize: str = "none") -> list[list[float]]:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize='{normalize}' is not one of {list(NORMALIZATIONS)}")
        if normalize == "none":
            return [list(s) for s in self.logprobs]
        lengths = self.num_tokens if normalize == "tokens" else self.num_chars
        return [
            [s / max(n, 1) for s, n in zip(ss, ns, strict=True)]
            for ss, ns in zip(self.logprobs, lengths, strict=True)
        ]

    def predictions(self, normalize: str = "none") -> list[int]:
        """Index of the best option of every example (first one on ties)."""
        return [
            max(range(len(s)), key=lambda j, s=s: (s[j], -j)) for s in self.normalized(normalize)
        ]


def encode_pair(
    tokenizer, prompt: str | Sequence[int], option: str, max_length: int | None = None
) -> tuple[list[int], int]:
    """``(ids, n_option)``: prompt ids (left-truncated to fit ``max_length``) + option ids."""
    p = prompt_ids(tokenizer, prompt)
    o = list(tokenizer(option, add_special_tokens=False)["input_ids"])
    if not o:
        raise ValueError(f"option {option!r} has no tokens")
    if max_length is not None and len(p) + len(o) > max_length:
        keep = max_length - len(o)
        if keep < 1:
            raise ValueError(
                f"option {option!r} ({len(o)} tokens) does not fit max_length={max_length}"
            )
        p = p[len(p) - keep :]
    if not p:
        raise ValueError("an empty prompt has no token to predict the first option token from")
    return p + o, len(o)


def _check_inputs(prompts, options, batch_size: int) -> None:
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def score_options(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    options: Sequence[Sequence[str]],
    batch_size: int = 8,
    padding_side: str = "right",
    max_length: int | None = None,
    share_prompt: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> OptionScores:
    """Summed log-probability of every option of every prompt (see the module docstring).

    ``share_prompt`` runs each prompt once and scores its options from the prompt's
    key/value cache (:func:`score_options_cached`): the same scores, k times less work
    for k options; ``batch_size`` then counts prompts. ``progress`` wraps the loop over
    batches (a progress display, :func:`guilomo.utils.progress.eval_progress`).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    _check_inputs(prompts, options, batch_size)
    if share_prompt:
        return score_options_cached(
            model, tokenizer, prompts, options, batch_size, max_length, progress
        )
    items = []  # (example, option, ids, n_option)
    for i, (prompt, opts) in enumerate(zip(prompts, options, strict=True)):
        if not opts:
            raise ValueError(f"example {i} has no options")
        for j, opt in enumerate(opts):
            ids, n = encode_pair(tokenizer, prompt, opt, max_length)
            items.append((i, j, ids, n))
    logprobs = [[0.0] * len(o) for o in options]
    num_tokens = [[0] * len(o) for o in options]
    num_chars = [[len(x) for x in o] for o in options]
    hits = [[0] * len(o) for o in options]
    if not items:
        return OptionScores(logprobs, num_tokens, num_chars, hits)

    pad_id = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    slice_head = _accepts_logits_to_keep(model)
    items.sort(key=lambda it: -len(it[2]))
    was_training = model.training
    model.eval()
    try:
        for start in (progress or iter)(range(0, len(items), batch_size)):
            batch = items[start : start + batch_size]
            width = max(len(it[2]) for it in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            rows, cols, targets = [], [], []
            for b, (_, _, seq, n) in enumerate(batch):
                off = width - len(seq) if padding_side == "left" else 0
                ids[b, off : off + len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[b, off : off + len(seq)] = 1
                first = off + len(seq) - n  # position of the first option token
                for t in range(n):
                    rows.append(b)
                    cols.append(first + t - 1)  # the logit at p-1 predicts the token at p
                    targets.append(seq[len(seq) - n + t])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            lo, hi = min(cols), max(cols)
            kwargs = dict(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=False,
            )
            if slice_head:
                kwargs["logits_to_keep"] = torch.arange(lo, hi + 1, device=device)
                offset = lo
            else:
                offset = 0
            logits = model(**kwargs).logits
            dev = logits.device
            r = torch.tensor(rows, device=dev)
            c = torch.tensor(cols, device=dev) - offset
            picked = logits[r, c].float()
            tgt = torch.tensor(targets, device=dev)[:, None]
            lp = torch.log_softmax(picked, dim=-1).gather(-1, tgt)
            lp = lp.squeeze(-1).cpu()
            hit = (picked.argmax(-1) == tgt[:, 0]).cpu()
            k = 0
            for i, j, _, n in batch:
                logprobs[i][j] = float(lp[k : k + n].sum())
                num_tokens[i][j] = n
                hits[i][j] = int(hit[k : k + n].sum())
                k += n
    finally:
        model.train(was_training)
    return OptionScores(logprobs, num_tokens, num_chars, hits)


@torch.no_grad()
def score_options_cached(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    options: Sequence[Sequence[str]],
    batch_size: int = 8,
    max_length: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> OptionScores:
    """Like :func:`score_options`, but every prompt goes through the model once.

    Prompts are left-padded and run with ``use_cache=True``; the last prompt logit
    scores each option's first token. The cache is then gathered once per
    (prompt, option) pair (``reorder_cache``), and the right-padded options run on top
    of it with positions that continue the prompt's; their logits score the rest.
    """
    _check_inputs(prompts, options, batch_size)
    pad_id = pad_id_of(tokenizer)
    keep = _accepts_logits_to_keep(model)
    device = next(model.parameters()).device
    enc = []  # (prompt ids, [option ids])
    for i, (prompt, opts) in enumerate(zip(prompts, options, strict=True)):
        if not opts:
            raise ValueError(f"example {i} has no options")
        pairs = [encode_pair(tokenizer, prompt, o, max_length) for o in opts]
        ids, n = max(pairs, key=lambda pair: pair[1])  # max_length truncation fits every option
        p = ids[: len(ids) - n]
        enc.append((p, [ids[len(ids) - n :] for ids, n in pairs]))
    logprobs = [[0.0] * len(o) for o in options]
    num_tokens = [[len(x) for x in e[1]] for e in enc]
    num_chars = [[len(x) for x in o] for o in options]
    hits = [[0] * len(o) for o in options]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i][0]))
    was_training = model.training
    model.eval()
    try:
        for start in (progress or iter)(range(0, len(order), batch_size)):
            rows = order[start : start + batch_size]
            width = max(len(enc[i][0]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, i in enumerate(rows):
                p = enc[i][0]
                ids[b, width - len(p) :] = torch.tensor(p)
                mask[b, width - len(p) :] = 1
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
                use_cache=True,
                **({"logits_to_keep": 1} if keep else {}),
            )
            first = torch.log_softmax(out.logits[:, -1].float(), -1).cpu()
            first_best = first.argmax(-1).tolist()
            pair_src, pair_opt = [], []
            for b, i in enumerate(rows):
                for j in range(len(enc[i][1])):
                    pair_src.append(b)
                    pair_opt.append((i, j, enc[i][1][j]))
            o_width = max(len(o) for _, _, o in pair_opt)
            if o_width > 1:
                src = torch.tensor(pair_src)
                o_ids = torch.full((len(pair_opt), o_width), pad_id, dtype=torch.long)
                o_mask = torch.zeros((len(pair_opt), o_width), dtype=torch.long)
                for k, (_, _, o) in enumerate(pair_opt):
                    o_ids[k, : len(o)] = torch.tensor(o)
                    o_mask[k, : len(o)] = 1
                cache = out.past_key_values
                cache.reorder_cache(src.to(device))
                full_mask = torch.cat([mask[src], o_mask], dim=1)
                pos = mask.sum(-1)[src, None] + torch.arange(o_width)[None]
                rest = model(
                    input_ids=o_ids.to(device),
                    attention_mask=full_mask.to(device),
                    position_ids=pos.to(device),
                    past_key_values=cache,
                    use_cache=False,
                    **({"logits_to_keep": o_width} if keep else {}),
                ).logits[:, -o_width:-1]
                rest = torch.log_softmax(rest.float(), -1).cpu()
                rest_best = rest.argmax(-1).tolist()
            for k, (i, j, o) in enumerate(pair_opt):
                lp = float(first[pair_src[k], o[0]])
                hit = int(first_best[pair_src[k]] == o[0])
                for t in range(1, len(o)):
                    lp += float(rest[k, t - 1, o[t]])
                    hit += int(rest_best[k][t - 1] == o[t])
                logprobs[i][j] = lp
                hits[i][j] = hit
    finally:
        model.train(was_training)
    return OptionScores(logprobs, num_tokens, num_chars, hits)
