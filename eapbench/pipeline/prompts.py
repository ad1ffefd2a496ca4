"""Prompt templates per model family (SPEC §7) and user-supplied template strings.

A template is either a registered name (``"deepseek-math"``, ``"mistral"``, ``"qwen25-math-cot"``,
``"r1-distill"``, ``"mini"``, ``"smollm2"``, ...) or a format string containing ``{question}``.
Each registered family also records its answer marker (used by :mod:`eapbench.grading` when
the answer is not boxed), its maximum number of new tokens (SPEC §4), and whether the
tokenizer should add special tokens (BOS) when the prompt text is tokenized.

Plain templates are filled with :meth:`str.replace` (not :meth:`str.format`), so literal
braces such as ``\\boxed{}`` need no escaping. Chat templates (``chat=True``) are rendered by
the model's own tokenizer via ``apply_chat_template``, so :func:`format_prompt` needs the
tokenizer for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cache import stable_hash

__all__ = ["Template", "TEMPLATES", "get_template", "format_prompt", "register_template", "BOXED_INSTRUCTION"]

PLACEHOLDER = "{question}"
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Template:
    """One prompt format and the decoding facts that go with it."""

    name: str
    text: str  # contains "{question}"; for chat templates, the user message
    marker: str | None = None  # answer marker used when the answer is not boxed
    max_new_tokens: int | None = None  # family default (SPEC §4); None: the caller decides
    chat: bool = False  # render with tokenizer.apply_chat_template
    system: str | None = None  # system message for chat templates
    add_special_tokens: bool = True  # let the tokenizer add BOS when tokenizing the prompt text

    def __post_init__(self) -> None:
        if PLACEHOLDER not in self.text:
            raise ValueError(
                f"template {self.name!r} has no {PLACEHOLDER} placeholder: {self.text!r}; "
                "write one where the problem text goes, e.g. 'Q: {question}\\nA:'")

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this template in a cache key."""
        return {"name": self.name, "text": self.text, "chat": self.chat, "system": self.system,
                "add_special_tokens": self.add_special_tokens}

    def format(self, question: str, tokenizer: Any = None) -> str:
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}")
        user = self.text.replace(PLACEHOLDER, question)
        if not self.chat:
            return user
        if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"template {self.name!r} is a chat template rendered by the model's tokenizer; "
                "pass the tokenizer (one that has a chat_template) to format_prompt")
        messages = ([{"role": "system", "content": self.system}] if self.system else [])
        messages.append({"role": "user", "content": user})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


_DEEPSEEK = "User: {question}\n" + BOXED_INSTRUCTION + "\n\nAssistant:"
_QWEN25_COT = ("<|im_start|>system\n" + BOXED_INSTRUCTION + "<|im_end|>\n"
               "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")

TEMPLATES: dict[str, Template] = {}


def register_template(template: Template, *, overwrite: bool = False) -> Template:
    """Add a family template to the registry (names are unique unless ``overwrite``)."""
    if template.name in TEMPLATES and not overwrite:
        raise ValueError(f"template {template.name!r} is already registered; pass overwrite=True to replace it")
    TEMPLATES[template.name] = template
    return template


for _t in (
    Template("deepseek-math", _DEEPSEEK, max_new_tokens=4096),
    Template("mistral", "[INST] {question}[/INST]", marker="The answer is", max_new_tokens=4096),
    Template("r1-distill", _DEEPSEEK, max_new_tokens=32768),
    Template("qwen25-math-cot", _QWEN25_COT, max_new_tokens=8192, add_special_tokens=False),
    # the mini zoo's own format: " 5+8=13. 13-2=11. \boxed{11}" then EOS
    Template("mini", "Problem: {question}\nSolution:", max_new_tokens=128, add_special_tokens=False),
    # chat models rendered by their tokenizer (SmolLM2-Instruct, OLMo-2 / Tulu-3 instruct models)
    # ("answer is" also catches "the final answer is"; small chat models rarely box their answer)
    Template("smollm2", "{question}\n" + BOXED_INSTRUCTION, marker="answer is", max_new_tokens=512,
             chat=True, add_special_tokens=False),
    Template("chat", "{question}\n" + BOXED_INSTRUCTION, marker="answer is", max_new_tokens=4096,
             chat=True, add_special_tokens=False),
):
    register_template(_t)

ALIASES = {"deepseek": "deepseek-math", "qwen2.5-math-cot": "qwen25-math-cot", "qwen25": "qwen25-math-cot",
           "distilled-qwen": "r1-distill", "acereason": "r1-distill", "olmo2": "chat", "tulu3": "chat"}


def get_template(template: str | Template) -> Template:
    """A registered template by name (or alias), or a user format string wrapped as a Template."""
    if isinstance(template, Template):
        return template
    if not isinstance(template, str):
        raise TypeError(f"template must be a name or a format string, got {type(template).__name__}")
    name = ALIASES.get(template, template)
    if name in TEMPLATES:
        return TEMPLATES[name]
    if PLACEHOLDER in template:
        return Template(f"custom-{stable_hash(template, 8)}", template)
    raise ValueError(
        f"unknown template {template!r}: not a registered name ({', '.join(sorted(TEMPLATES))}) "
        f"and no {PLACEHOLDER} placeholder for a custom format string")


def format_prompt(template: str | Template, question: str, tokenizer: Any = None) -> str:
    """The prompt text for ``question`` (chat templates need ``tokenizer``)."""
    return get_template(template).format(question, tokenizer)
