"""The zoo's task plumbing: prompt template, encoding, reward, sampling, log-probs, accuracy.

Shared by every training method so that SFT, GRPO, PPO and DPO see the same prompts,
the same decoding and the same reward. Sampling is a hand-written KV-cached loop with an
explicit ``torch.Generator`` (pure temperature sampling: no top-k/top-p), so results
depend only on the weights, the seed and the thread count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from ..records import Problem

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "Problem: {question}\nSolution:"
MAX_NEW_TOKENS = 64


def prompt_text(problem: Problem) -> str:
    return PROMPT_TEMPLATE.format(question=problem.question)


def answer_text(problem: Problem) -> str:
    """The training target after the prompt: a space, then the reference solution (EOS added on encoding)."""
    if problem.solution is None:
        raise ValueError(f"problem {problem.id!r} has no reference solution; the zoo needs synthetic problems")
    return " " + problem.solution


def encode_prompts(tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    return [tokenizer(prompt_text(p), add_special_tokens=False)["input_ids"] for p in problems]


def encode_answers(tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    return [tokenizer(answer_text(p), add_special_tokens=False)["input_ids"] + [eos] for p in problems]


def grader() -> tuple[Callable[[str, str], bool], str]:
    """The reward's grader: ``eapbench.pipeline.grading.grade`` (the issue asks for the grader's reward)."""
    from ..pipeline.grading import grade

    return (lambda completion, reference: bool(grade(completion, reference))), "eapbench.pipeline.grading.grade"


def rewards(tokenizer, completions: Sequence[Sequence[int]], problems: Sequence[Problem],
            grade: Callable[[str, str], bool]) -> torch.Tensor:
    """1.0 for a completion the grader accepts, else 0.0 (float32 [n])."""
    texts = tokenizer.batch_decode([list(c) for c in completions], skip_special_tokens=True)
    return torch.tensor([1.0 if grade(t, p.answer) else 0.0 for t, p in zip(texts, problems)])


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attn[i, width - len(r):] = 1
    return ids, attn


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = True
    return ids, mask


@torch.no_grad()
def sample(model, prompts: Sequence[Sequence[int]], *, eos_id: int, pad_id: int, temperature: float,
           generator: torch.Generator | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
           batch_size: int = 256) -> list[list[int]]:
    """One completion per prompt (token ids, ending in EOS unless cut at ``max_new_tokens``).

    ``temperature == 0`` is greedy decoding; otherwise pure temperature sampling drawn from
    ``generator``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0 and generator is None:
        raise ValueError("sampling at temperature > 0 needs an explicit torch.Generator for determinism")
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, attn = _left_pad(chunk, pad_id)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        res = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        out.extend(decode(model, res.past_key_values, res.logits[:, -1, :].float(), attn, pos[:, -1],
                          temperature=temperature, generator=generator, eos_id=eos_id, pad_id=pad_id,
                          max_new_tokens=max_new_tokens))
    model.train(was_training)
    return out


def decode(model, cache, logits: torch.Tensor, attn: torch.Tensor, last_pos: torch.Tensor, *, temperature: float,
           generator: torch.Generator | None, eos_id: int, pad_id: int, max_new_tokens: int) -> list[list[int]]:
    """The KV-cached decoding loop after a prefill: ``logits`` [n, vocab] (float) at each row's last prompt
    position, ``attn`` [n, T] its left-padded attention mask and ``last_pos`` [n] its last position. Greedy
    at ``temperature == 0``, else pure temperature sampling from ``generator``; a row stops at ``eos_id``
    (kept), then pads with ``pad_id``. Returns each row's completion."""
    n = logits.shape[0]
    done = torch.zeros(n, dtype=torch.bool)
    gen = torch.full((n, max_new_tokens), pad_id, dtype=torch.long)
    lengths = torch.full((n,), max_new_tokens, dtype=torch.long)
    for t in range(max_new_tokens):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        gen[:, t] = nxt
        newly = (~done) & (nxt == eos_id)
        lengths[newly] = t + 1
        done |= newly
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones((n, 1), dtype=torch.long)], dim=1)
        last_pos = last_pos + 1
        res = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=last_pos[:, None],
                    past_key_values=cache, use_cache=True)
        cache = res.past_key_values
        logits = res.logits[:, -1, :].float()
    return [gen[i, :int(lengths[i])].tolist() for i in range(n)]


def completion_logprobs(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
                        pad_id: int, return_hidden: bool = False, temperature: float = 1.0):
    """Per-token log-probs of ``completions`` given ``prompts`` (teacher forcing, with grad).

    ``temperature`` scales the logits first, giving the log-probs of the sampling distribution
    the completions were drawn from (as TRL's trainers do).

    Returns ``(logp [n, C], mask [n, C])`` (and the final hidden states at the positions
    that predict each completion token, ``[n, C, d]``, if ``return_hidden``).
    """
    p_ids, p_attn = _left_pad(prompts, pad_id)
    c_ids, c_mask = _right_pad(completions, pad_id)
    ids = torch.cat([p_ids, c_ids], dim=1)
    attn = torch.cat([p_attn, c_mask.long()], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    res = model(input_ids=ids, attention_mask=attn, position_ids=pos, output_hidden_states=return_hidden)
    P, C = p_ids.shape[1], c_ids.shape[1]
    logits = res.logits[:, P - 1:P + C - 1, :].float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, c_ids[..., None]).squeeze(-1)
    logp = logp * c_mask
    if return_hidden:
        return logp, c_mask, res.hidden_states[-1][:, P - 1:P + C - 1, :]
    return logp, c_mask


def correct(model, tokenizer, problems: Sequence[Problem], grade: Callable[[str, str], bool],
            *, temperature: float = 0.0, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Per problem, whether the model answers it correctly (bool ``[n]``; greedy by default)."""
    gen = torch.Generator().manual_seed(seed)
    comps = sample(model, encode_prompts(tokenizer, problems), eos_id=tokenizer.eos_token_id,
                   pad_id=tokenizer.pad_token_id, temperature=temperature, generator=gen,
                   batch_size=batch_size)
    return rewards(tokenizer, comps, problems, grade).bool()


def accuracy(model, tokenizer, problems: Sequence[Problem], grade: Callable[[str, str], bool],
             *, temperature: float = 0.0, seed: int = 0, batch_size: int = 256) -> float:
    """Fraction of ``problems`` answered correctly (greedy by default)."""
    return float(correct(model, tokenizer, problems, grade, temperature=temperature, seed=seed,
                         batch_size=batch_size).float().mean())
