"""Batched greedy generation with left padding; returns only the newly generated text.

Prompts are token-id lists (e.g. the datamodule's test prompts) or texts, tokenised
one by one (``add_special_tokens`` as the tokenizer does by default); sorted by length so each batch pads little, left-padded by hand (the
tokenizer's ``padding_side`` is not touched) and decoded with
``model.generate(do_sample=False, num_beams=1)``. Only the tokens after the prompt
are decoded (special tokens skipped); outputs come back in the prompts' order.
An optional ``stop`` list cuts each output at the first stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from transformers import GenerationConfig


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(
            "the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token"
        )
    return int(pad)


def prompt_ids(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """A prompt's token ids: a text tokenised as the tokenizer does by default (special
    prefix tokens included), or a token-id list (already tokenised) as it is."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    return [int(i) for i in prompt]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token lists padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def _truncate_at(text: str, stop: Sequence[str] | None) -> str:
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    stop: Sequence[str] | None = None,
    max_prompt_tokens: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[str]:
    """Greedy continuation of every prompt (new text only), batched with left padding.

    ``max_prompt_tokens`` keeps only the last that many prompt tokens; ``progress``
    wraps the loop over batches (a progress display).
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    prompts = list(prompts)
    if not prompts:
        return []
    pad_id = pad_id_of(tokenizer)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    if max_prompt_tokens is not None:
        encoded = [e[-max_prompt_tokens:] for e in encoded]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("an empty prompt has no tokens to condition on")
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=int(max_new_tokens),
        pad_token_id=pad_id,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
    )
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in (progress or iter)(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            ids, mask = left_pad([encoded[i] for i in idx], pad_id)
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            new = out[:, ids.shape[1] :].cpu()
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, t in zip(idx, texts, strict=True):
                outputs[i] = _truncate_at(t, stop)
    finally:
        model.train(was_training)
    return outputs
