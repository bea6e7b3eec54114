"""Score a model on a datamodule's held-out test split, the way the config asks.

``mode=loglik`` ranks the options of multiple-choice tasks by log-likelihood;
``mode=generate`` decodes greedily and reads the answer with the task's regex;
``mode=loss`` only scores the held-out loss. Free-form tasks use generation unless the
mode is ``loss``. The prompts are the datamodule's test
prompts (``test_data``, what ``test_dataloader`` batches): tokenised, and cut to
``cutoff_len`` where the task truncates, exactly as for training. A progress bar named
``description`` shows the batches unless ``eval.progress`` is false.

Data-parallel (``world_size > 1``, after a Lightning DDP/FSDP fit): process ``rank``
scores every ``world_size``-th test example and the metrics are gathered over the
processes by torchmetrics, so each example is scored once and every process gets the
metrics of the whole test set.
"""

from __future__ import annotations

import torch

from guilomo.eval.evaluator import EvalSettings, evaluate
from guilomo.utils.progress import eval_progress


def evaluate_datamodule(
    model, tokenizer, dm, eval_cfg, description: str = "test", rank: int = 0, world_size: int = 1
) -> dict:
    if not getattr(dm, "test_examples", None):
        dm.setup("test")
    examples = list(dm.test_examples)
    prompts = [d["input_ids"] for d in dm.test_data]
    if eval_cfg.get("limit"):
        examples, prompts = examples[: int(eval_cfg.limit)], prompts[: int(eval_cfg.limit)]
    spec = dm.spec
    # the same classes on every shard (the metric states must match to be gathered)
    num_classes = max([2, *(len(ex.options) for ex in examples)])
    if len(examples) < world_size:
        raise ValueError(
            f"{len(examples)} test examples cannot be shared by {world_size} processes: "
            "raise task.datamodule.test_size / eval.limit"
        )
    examples, prompts = examples[rank::world_size], prompts[rank::world_size]
    settings = EvalSettings(
        mode=eval_cfg.mode if spec.multiple_choice or eval_cfg.mode == "loss" else "generate",
        answer_pattern=spec.answer_pattern,
        metrics=tuple(spec.metrics),
        batch_size=int(eval_cfg.batch_size),
        max_new_tokens=int(eval_cfg.max_new_tokens),
    )
    # training targets end with eos, so an option is scored as "option<eos>": this also
    # keeps an option that is a prefix of another from winning by being shorter
    eos = tokenizer.eos_token if eval_cfg.get("option_eos", True) else ""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        result = evaluate(
            model,
            tokenizer,
            prompts,
            [ex.answer for ex in examples],
            options=[[o + eos for o in ex.options] for ex in examples]
            if spec.multiple_choice
            else None,
            labels=[ex.label for ex in examples] if spec.multiple_choice else None,
            settings=settings,
            progress=eval_progress(description, bool(eval_cfg.get("progress", True)) and rank == 0),
            num_classes=num_classes if spec.multiple_choice else None,
            gold_suffix=eos,
        )
    model.train(was_training)
    result["mode"] = settings.mode
    return result
