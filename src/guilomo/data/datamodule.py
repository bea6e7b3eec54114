"""``TaskDataModule``: one task, tokenized for causal-LM fine-tuning and evaluation.

Splits are carved from the source's training pool with a seeded permutation
(test first, then val; sizes are counts or fractions of the pool) unless
``test_split`` / ``val_split`` name a split of the source itself. Train and val
batches are right-padded ``input_ids``, ``attention_mask`` and ``labels``
(-100 on padding and, unless ``train_on_inputs``, on the prompt); the target is
``Example.output`` + eos, tokenized apart from the prompt. Test batches are
left-padded prompts plus ``index`` into ``test_examples``, for generation or
option scoring (use ``encode_target`` to tokenize an option the same way).

Every sequence must fit in ``cutoff_len`` (prompt + longest target); otherwise
setup fails, unless ``truncate`` cuts the prompt from the left (keeping at least
half of ``cutoff_len`` for it) and then the target from the right.
"""

from __future__ import annotations

import random
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader

from guilomo.data.example import Example
from guilomo.data.tasks import get_task
from guilomo.data.templates import get_template

IGNORE = -100


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A permutation that depends only on (seed, epoch): Lightning calls ``set_epoch``
    each epoch, so a run resumed from a checkpoint sees the same order as an
    uninterrupted one. ``start`` skips the first indices of the next pass (mid-epoch
    resume; see :class:`ResumableDataLoader`)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        start, self.start = self.start, 0
        return iter(torch.randperm(self.n, generator=gen).tolist()[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning can checkpoint mid-epoch: it has ``state_dict`` /
    ``load_state_dict`` (Lightning's stateful-loader protocol), counting the batches it
    has yielded in the current epoch; after ``load_state_dict`` the next pass starts
    right after them, skipped at the sampler (no data is loaded for them). Batch ``i``
    holds sampler positions ``[i * batch_size, (i + 1) * batch_size)``, so skipping
    ``k * batch_size`` positions resumes at batch ``k`` exactly. Under a sampler Lightning
    substituted (a distributed wrapper), the skipped batches are drawn and dropped.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.yielded, self._resume_at = 0, 0

    def __iter__(self):
        skip, self._resume_at = self._resume_at, 0
        own = isinstance(self.sampler, EpochShuffleSampler)
        if own:
            self.sampler.start = skip * self.batch_size
        self.yielded = skip
        for i, batch in enumerate(super().__iter__()):
            if own or i >= skip:
                self.yielded += 1
                yield batch

    def state_dict(self) -> dict:
        return {"batches": self.yielded}

    def load_state_dict(self, state: dict) -> None:
        done = int(state["batches"])
        self._resume_at = done if done < len(self) else 0  # a finished epoch: start the next


def _pad(seqs: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [
        ([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in seqs
    ]
    return torch.tensor(rows, dtype=torch.long)


def collate_train(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    ids = [f["input_ids"] for f in features]
    return {
        "input_ids": _pad(ids, pad_id),
        "attention_mask": _pad([[1] * len(s) for s in ids], 0),
        "labels": _pad([f["labels"] for f in features], IGNORE),
    }


def collate_prompts(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    ids = [f["input_ids"] for f in features]
    return {
        "input_ids": _pad(ids, pad_id, left=True),
        "attention_mask": _pad([[1] * len(s) for s in ids], 0, left=True),
        "index": torch.tensor([f["index"] for f in features], dtype=torch.long),
    }


def _count(size: int | float, n: int, what: str) -> int:
    k = round(size * n) if isinstance(size, float) and 0 < size < 1 else size
    if not float(k).is_integer() or not 0 <= k <= n:
        raise ValueError(f"{what}={size} is not a count in [0, {n}] or a fraction in (0, 1)")
    if size and not k:
        raise ValueError(f"{what}={size} leaves an empty split out of {n} examples; raise it")
    return int(k)


class TaskDataModule(L.LightningDataModule):
    def __init__(
        self,
        task: str,
        tokenizer=None,
        task_kwargs: dict | None = None,
        template: str = "alpaca",
        cutoff_len: int = 256,
        train_on_inputs: bool = False,
        truncate: bool = False,
        val_size: int | float = 0.1,
        test_size: int | float = 0.2,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = None,
        max_train_examples: int | None = None,
        max_test_examples: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        if tokenizer is None:
            raise ValueError(
                "TaskDataModule needs a tokenizer: instantiate(cfg.task.datamodule, tokenizer=tok)"
            )
        self.spec = get_task(task)
        self.template = get_template(template)
        self.tokenizer, self.task_kwargs = tokenizer, dict(task_kwargs or {})
        self.cutoff_len, self.train_on_inputs, self.truncate = cutoff_len, train_on_inputs, truncate
        self.val_size, self.test_size = val_size, test_size
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.max_train_examples, self.max_test_examples = max_train_examples, max_test_examples
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.num_workers = seed, num_workers
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.test_examples: list[Example] = []
        self._ready = False

    # ---- splits -----------------------------------------------------------------------------
    def _load(self, split: str) -> list[Example]:
        examples = self.spec.load(split, **self.task_kwargs)
        if not examples:
            raise ValueError(
                f"task {self.spec.name!r} split {split!r} has no examples (a filter removed every row, "
                f"or the source is empty); check task_kwargs={self.task_kwargs}"
            )
        return examples

    def setup(self, stage: str | None = None) -> None:
        """Load, split and tokenize (once; later calls do nothing)."""
        if self._ready:
            return
        pool = self._load(self.train_split)
        order = list(range(len(pool)))
        random.Random(self.seed).shuffle(order)
        pool = [pool[i] for i in order]
        n = len(pool)
        n_test = 0 if self.test_split else _count(self.test_size, n, "test_size")
        n_val = 0 if self.val_split else _count(self.val_size, n, "val_size")
        test, val, train = pool[:n_test], pool[n_test : n_test + n_val], pool[n_test + n_val :]
        if self.test_split:
            test = self._subsample(self._load(self.test_split), self.max_test_examples)
        elif self.max_test_examples is not None:
            test = test[: self.max_test_examples]
        if self.val_split:
            val = self._load(self.val_split)
        self.train_examples = train[: self.max_train_examples]
        if not self.train_examples:
            raise ValueError(
                f"task {self.spec.name!r}: no training examples left out of {n} after "
                f"test_size={self.test_size}, val_size={self.val_size} and "
                f"max_train_examples={self.max_train_examples}; lower the sizes"
            )
        self.val_examples, self.test_examples = val, test
        self.train_data = self._supervised(self.train_examples, "train")
        self.val_data = self._supervised(self.val_examples, "val")
        self.test_data = self._prompts(self.test_examples, "test")
        self._ready = True

    def _subsample(self, examples: list[Example], k: int | None) -> list[Example]:
        if k is None or k >= len(examples):
            return examples
        keep = sorted(random.Random(self.seed).sample(range(len(examples)), k))
        return [examples[i] for i in keep]

    # ---- tokenization -----------------------------------------------------------------------
    def prompt_text(self, example: Example) -> str:
        return self.template.render(example)

    def encode_target(self, text: str) -> list[int]:
        """Target token ids: ``text`` then eos, no prefix tokens (as in training)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [
            self.tokenizer.eos_token_id
        ]

    def _fit(self, examples: list[Example], split: str) -> list[tuple[list[int], list[int], int]]:
        """(prompt ids, target ids, longest target) per example, within cutoff_len."""
        if not examples:
            return []
        prompts = self.tokenizer([self.prompt_text(e) for e in examples])["input_ids"]
        texts = list(dict.fromkeys(s for e in examples for s in (e.output, *e.options)))
        eos = [self.tokenizer.eos_token_id]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        targets = {s: t + eos for s, t in zip(texts, ids, strict=True)}
        out, too_long = [], []
        for e, p in zip(examples, prompts, strict=True):
            t = targets[e.output]
            longest = max(len(targets[s]) for s in (e.output, *e.options))
            if len(p) + longest > self.cutoff_len:
                too_long.append((len(p) + longest, len(p), longest))
                keep = min(len(p), max(self.cutoff_len - longest, self.cutoff_len // 2))
                p = p[len(p) - keep :]
                t = t[: self.cutoff_len - keep]
            out.append((p, t, longest))
        if too_long and not self.truncate:
            need, lp, lt = max(too_long)
            raise ValueError(
                f"task {self.spec.name!r}: {len(too_long)} of {len(examples)} {split} examples do not fit "
                f"in cutoff_len={self.cutoff_len} tokens (longest needs {need} = prompt {lp} + target {lt} "
                f"incl. eos); set cutoff_len >= {need}, or truncate: true to cut prompts from the left"
            )
        return out

    def _supervised(self, examples: list[Example], split: str) -> list[dict]:
        data = []
        for p, t, _ in self._fit(examples, split):
            labels = (p if self.train_on_inputs else [IGNORE] * len(p)) + t
            data.append({"input_ids": p + t, "labels": labels})
        return data

    def _prompts(self, examples: list[Example], split: str) -> list[dict]:
        return [
            {"input_ids": p, "index": i} for i, (p, _, _) in enumerate(self._fit(examples, split))
        ]

    # ---- loaders ----------------------------------------------------------------------------
    def _loader(self, data, batch_size, collate, shuffle=False):
        if not data:
            return []  # Lightning skips a loop with no batches
        # a private generator: creating an iterator draws the workers' base seed from it,
        # not from the global RNG (a resumed run would otherwise draw once more)
        kwargs = dict(
            batch_size=batch_size,
            collate_fn=partial(collate, pad_id=self.pad_id),
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )
        if shuffle:
            return ResumableDataLoader(
                data, sampler=EpochShuffleSampler(len(data), self.seed), **kwargs
            )
        return DataLoader(data, **kwargs)

    def train_dataloader(self):
        self.setup()
        return self._loader(self.train_data, self.batch_size, collate_train, shuffle=True)

    def val_dataloader(self):
        self.setup()
        return self._loader(self.val_data, self.eval_batch_size, collate_train)

    def test_dataloader(self):
        self.setup()
        return self._loader(self.test_data, self.eval_batch_size, collate_prompts)

    def prompt_dataloader(self, examples: list[Example], batch_size: int | None = None):
        """Left-padded prompts of any examples (e.g. ``val_examples``), ``index`` into that list."""
        return self._loader(
            self._prompts(examples, "given"), batch_size or self.eval_batch_size, collate_prompts
        )
