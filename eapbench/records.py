"""Plain records passed between stages (DESIGN.md: each arrow is a frozen value).

``Problem`` flows out of the datasets, ``AttributionInputs`` out of paired selection and
into :func:`eapbench.attribute`. Both are frozen and hold only plain Python data, so
they hash, pickle and serialise to JSON without a model in sight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch


@dataclass(frozen=True)
class Problem:
    """One math problem, normalised across sources."""

    id: str
    question: str
    answer: str  # reference final answer (e.g. "42", "\\frac{3}{4}")
    source: str  # dataset name, e.g. "gsm8k", "math", "college_math", "synthetic"
    solution: str | None = None  # reference worked solution, when the source has one
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how it is prompted and decoded.

    ``path`` is a hub id or a local folder (with ``gguf_file`` for a GGUF inside it);
    ``template`` is a registered template name (``eapbench.prompts``) or a format string
    containing ``{question}``.
    """

    path: str
    template: str
    max_new_tokens: int = 1024
    revision: str | None = None
    gguf_file: str | None = None
    name: str = ""  # short label for reports; defaults to the path

    @property
    def label(self) -> str:
        return self.name or self.path


@dataclass(frozen=True)
class AttributionInputs:
    """One model's teacher-forced inputs for attribution, unpadded, one row per sample.

    ``input_ids[k]`` is prompt + answer[:t_cut]; the targets of sample k are the answer
    tokens, i.e. positions ``prompt_lengths[k] .. prompt_lengths[k] + t_cut - 1`` (each
    predicted from the position before it).
    """

    problem_ids: tuple[str, ...]
    input_ids: tuple[tuple[int, ...], ...]
    prompt_lengths: tuple[int, ...]
    t_cut: int
    model: str = ""  # name or path of the model whose answers these are
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        n = len(self.problem_ids)
        if len(self.input_ids) != n or len(self.prompt_lengths) != n:
            raise ValueError(
                f"AttributionInputs: {n} problem ids but {len(self.input_ids)} input rows and "
                f"{len(self.prompt_lengths)} prompt lengths; all three must have one entry per sample")
        if self.t_cut < 1:
            raise ValueError(f"AttributionInputs: t_cut must be >= 1, got {self.t_cut}")
        for pid, ids, p in zip(self.problem_ids, self.input_ids, self.prompt_lengths):
            if p < 1 or len(ids) < p + 1:
                raise ValueError(
                    f"AttributionInputs: sample {pid!r} has {len(ids)} tokens and prompt length {p}; "
                    "it needs a non-empty prompt and at least one answer token")

    def __len__(self) -> int:
        return len(self.problem_ids)

    def tensors(self, pad_token_id: int, rows: slice | Sequence[int] | None = None,
                padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded ``(input_ids, attention_mask, loss_mask)`` long/bool tensors for the selected rows
        (a slice, or row indices in the order they are to be stacked)."""
        if rows is None:
            idx = range(len(self))
        elif isinstance(rows, slice):
            idx = range(len(self))[rows]
        else:
            idx = list(rows)
        seqs = [self.input_ids[i] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        loss = torch.zeros((len(seqs), width), dtype=torch.bool)
        for r, i in enumerate(idx):
            s = self.input_ids[i]
            off = 0 if padding_side == "right" else width - len(s)
            ids[r, off:off + len(s)] = torch.tensor(s, dtype=torch.long)
            attn[r, off:off + len(s)] = 1
            p = self.prompt_lengths[i]
            loss[r, off + p:off + len(s)] = True
        return ids, attn, loss

    def batches(self, batch_size: int, pad_token_id: int,
                padding_side: str = "right") -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self.tensors(pad_token_id, slice(start, start + batch_size), padding_side)
