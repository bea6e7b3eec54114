r"""Prompt templates: everything the model sees before its target.

``alpaca`` is the Stanford Alpaca template used by the reference code (MoLA /
GuiLoMo, via alpaca-lora), with and without the ``### Input:`` block.
``plain`` is a minimal one for small models: ``"{instruction}\n{input}\nAnswer: "``
(the input line is left out when the input is empty; note the trailing space).

The target (``Example.output`` + eos) is tokenized separately and appended, so
the prompt tokens are identical at training and at test time.
"""

from __future__ import annotations

from dataclasses import dataclass

from guilomo.data.example import Example


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    with_input: str
    no_input: str

    def render(self, example: Example) -> str:
        """The prompt for ``example`` (no target)."""
        fmt = self.with_input if example.input else self.no_input
        return fmt.format(instruction=example.instruction, input=example.input)


TEMPLATES = {
    "alpaca": PromptTemplate(
        "alpaca",
        with_input=(
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        no_input=(
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        ),
    ),
    "plain": PromptTemplate(
        "plain",
        with_input="{instruction}\n{input}\nAnswer: ",
        no_input="{instruction}\nAnswer: ",
    ),
}


def get_template(name: str) -> PromptTemplate:
    """Look a template up by name."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
