"""Prompt templates (eapbench.pipeline.prompts): registered families, custom strings, chat rendering."""

from __future__ import annotations

import pytest

from eapbench.pipeline.prompts import (BOXED_INSTRUCTION, TEMPLATES, Template, format_prompt, get_template,
                              register_template)


def test_mini_template_is_the_agreed_contract():
    assert format_prompt("mini", "Tom has 5 apples.") == "Problem: Tom has 5 apples.\nSolution:"
    assert get_template("mini").marker is None
    assert get_template("mini").add_special_tokens is False  # as the zoo tokenizes its prompts


def test_spec_templates_verbatim():
    q = "What is 1+1?"
    assert format_prompt("deepseek-math", q) == (
        "User: What is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."
        "\n\nAssistant:")
    assert format_prompt("mistral", q) == "[INST] What is 1+1?[/INST]"
    assert format_prompt("r1-distill", q) == format_prompt("deepseek-math", q)
    assert format_prompt("qwen25-math-cot", q) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
        "<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n")


def test_family_max_new_tokens_follow_spec():
    assert get_template("deepseek-math").max_new_tokens == 4096
    assert get_template("mistral").max_new_tokens == 4096
    assert get_template("qwen25-math-cot").max_new_tokens == 8192
    assert get_template("r1-distill").max_new_tokens == 32768


def test_aliases_resolve():
    assert get_template("deepseek") is TEMPLATES["deepseek-math"]
    assert get_template("distilled-qwen") is TEMPLATES["r1-distill"]


def test_braces_in_question_and_template_are_literal():
    q = "Find {x} if \\frac{1}{x} = 2."
    assert format_prompt("Q: {question} -> \\boxed{}", q) == "Q: Find {x} if \\frac{1}{x} = 2. -> \\boxed{}"


def test_custom_template_string_gets_stable_name():
    a, b = get_template("Q: {question}\nA:"), get_template("Q: {question}\nA:")
    assert a == b and a.name.startswith("custom-")
    assert get_template("Question: {question}\nA:").name != a.name


def test_unknown_name_without_placeholder_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown template 'no-such-family'.*placeholder"):
        get_template("no-such-family")


def test_template_without_placeholder_rejected():
    with pytest.raises(ValueError, match="no \\{question\\} placeholder"):
        Template("bad", "no slot here")


def test_register_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_template(Template("mini", "X {question}"))


def _chat_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>"
                          "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    return fast


def test_chat_template_rendered_by_the_tokenizer():
    text = format_prompt("smollm2", "What is 2+2?", tokenizer=_chat_tokenizer())
    assert text == f"<user>What is 2+2?\n{BOXED_INSTRUCTION}</user><assistant>"


def test_chat_template_with_system_message():
    t = Template("sys-chat", "{question}", chat=True, system="Be brief.")
    assert t.format("Hi", _chat_tokenizer()) == "<system>Be brief.</system><user>Hi</user><assistant>"


def test_chat_template_without_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="pass the tokenizer"):
        format_prompt("smollm2", "What is 2+2?")
