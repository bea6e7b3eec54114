import pytest

from guilomo.data import Example, get_template


def test_alpaca_with_and_without_input():
    alpaca = get_template("alpaca")
    with_input = alpaca.render(Example("Classify.", input="Hi there"))
    assert with_input.startswith(
        "Below is an instruction that describes a task, paired with an input"
    )
    assert with_input.endswith(
        "### Instruction:\nClassify.\n\n### Input:\nHi there\n\n### Response:\n"
    )
    no_input = alpaca.render(Example("Say hi."))
    assert "### Input:" not in no_input
    assert no_input.endswith("### Instruction:\nSay hi.\n\n### Response:\n")


def test_plain():
    plain = get_template("plain")
    assert plain.render(Example("Q?", input="ctx")) == "Q?\nctx\nAnswer: "
    assert plain.render(Example("Q?")) == "Q?\nAnswer: "


def test_braces_in_text_are_kept():
    assert get_template("plain").render(Example("{x}", input="{y}")) == "{x}\n{y}\nAnswer: "


def test_unknown_template():
    with pytest.raises(ValueError, match="unknown prompt template 'chat'.*alpaca.*plain"):
        get_template("chat")


def test_example_label_must_index_options():
    with pytest.raises(ValueError, match="label"):
        Example("q", output="a", options=("a", "b"), label=2)
