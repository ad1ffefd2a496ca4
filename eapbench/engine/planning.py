"""Planning attribution batches under a memory budget (issue 14).

Long answers (R1-Distill, AceReason: T_cut = α × mean answer length, thousands of tokens) do not fit
in fixed batches of 8. :func:`plan_batches` sorts the samples by length and packs them into batches
whose :func:`~eapbench.engine.memory.estimate_memory`, times the allocator's measured overhead
(:data:`ALLOCATOR_OVERHEAD`), stays under the budget (and whose size stays
under ``batch_size``), turning on activation checkpointing for a batch only when a single sample
needs it; :func:`resolve_budget` turns ``"auto"`` into the free memory of the device. Without a
budget, the plan is today's: consecutive batches of ``batch_size`` in input order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from .memory import estimate_memory, ig_settings

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
AUTO_FRACTION = 0.9  # "auto": this share of the free memory (workspaces, other processes)
# Peak memory per byte estimate_memory counts (live bytes). CPU: glibc keeps freed blocks in its heap;
# measured peak RSS ran up to 1/0.78 = 1.28x the estimate (benchmarks/memory_cpu.json, 7B shapes, with
# checkpointing). CUDA: the caching allocator's fragmentation, not measured yet (no GPU run): assumed 1.1.
ALLOCATOR_OVERHEAD = {"cpu": 1.3, "cuda": 1.1}


class PlanError(ValueError):
    """A sample that cannot be attributed within the memory budget, even with checkpointing."""


@dataclass(frozen=True)
class Batch:
    rows: tuple[int, ...]  # indices into the inputs, in the order they are stacked
    checkpointing: bool
    estimate: int | None = None  # bytes beyond the weights (None: no budget was planned against)


def parse_bytes(text: str | int | float) -> int:
    """``"40GiB"``, ``"500MB"``, ``"1.5e9"`` or a number of bytes -> bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"memory budget {text!r}: must be > 0")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"memory budget {text!r}: write a size like 40GiB, 500MB or 'auto'")
    return int(float(m.group(1)) * UNITS[unit])


def free_memory(device: Any) -> int:
    """Free memory of ``device`` now: CUDA's free bytes, or the CPU's MemAvailable."""
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("cannot read MemAvailable from /proc/meminfo; give the memory budget in bytes")


def resolve_budget(budget: str | int | None, device: Any) -> int | None:
    """None stays None (no planning); ``"auto"`` is 90% of the device's free memory; else a size."""
    if budget is None:
        return None
    if isinstance(budget, str) and budget.strip().lower() == "auto":
        return int(AUTO_FRACTION * free_memory(device))
    return parse_bytes(budget)


def plan_batches(config: Any, lengths: Sequence[int], *, batch_size: int, budget: int | None = None,
                 checkpointing: bool | str = False, dtype: Any = "float32", granularity: str = "qkv",
                 device: str = "cpu", names: Sequence[str] | None = None, method: str = "eap",
                 steps: int | None = None, baseline: str = "zero") -> list[Batch]:
    """Batches for samples of these token ``lengths`` (see module docstring).

    ``checkpointing``: False (never), True (always) or ``"auto"`` (for the samples that do not fit
    alone without it, batched only with each other). A sample that does not fit even with checkpointing is a :class:`PlanError`
    naming it, what it needs and the budget. ``method``, ``steps`` and ``baseline`` ("zero" or "tokens")
    are the attribution's, for :func:`~eapbench.engine.memory.estimate_memory` (EAP-IG keeps more).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if checkpointing not in (False, True, "auto"):
        raise ValueError(f"checkpointing must be False, True or 'auto', got {checkpointing!r}")
    ig_settings(method, steps, baseline)  # a bad method is an error with or without a budget
    n = len(lengths)
    if budget is None:
        return [Batch(tuple(range(s, min(s + batch_size, n))), checkpointing is True) for s in range(0, n, batch_size)]
    dev = str(device).split(":")[0]

    overhead = ALLOCATOR_OVERHEAD.get(dev, 1.3)

    def need(seq_len: int, rows: int, ckpt: bool, uneven: bool) -> int:
        return int(overhead * estimate_memory(config, seq_len=seq_len, batch_size=rows, dtype=dtype,
                                              checkpointing=ckpt, granularity=granularity, device=dev,
                                              padded=uneven, method=method, steps=steps, baseline=baseline))

    order = sorted(range(n), key=lambda i: (-lengths[i], i))  # longest first: a batch's width is its first row
    plan: list[Batch] = []
    i = 0
    while i < n:
        first = order[i]
        width = lengths[first]
        options = [False, True] if checkpointing == "auto" else [bool(checkpointing)]
        ckpt = next((c for c in options if need(width, 1, c, False) <= budget), None)
        if ckpt is None:
            name = names[first] if names else f"#{first}"
            least = need(width, 1, True if checkpointing in (True, "auto") else False, False)
            raise PlanError(f"sample {name} ({width} tokens) needs {least / 2**30:.2f} GiB for attribution"
                            f"{' even with checkpointing' if checkpointing in (True, 'auto') else ''}, more than "
                            f"the memory budget {budget / 2**30:.2f} GiB; raise --memory-budget, shorten answers "
                            f"(a smaller alpha), or spread the model over devices (--device-map)"
                            + ("" if checkpointing in (True, "auto") else ", or allow checkpointing"))
        rows = [first]
        estimate = need(width, 1, ckpt, False)
        uneven = False  # rows of different lengths: a materialised mask (and repeated k/v heads in SDPA)
        j = i + 1
        while j < n and len(rows) < batch_size:
            if ckpt and checkpointing == "auto" and need(lengths[order[j]], 1, False, False) <= budget:
                break  # the next sample fits without recomputation: it starts a batch of its own
            candidate = need(width, len(rows) + 1, ckpt, uneven or lengths[order[j]] != width)
            if candidate > budget:
                break
            uneven = uneven or lengths[order[j]] != width
            rows.append(order[j])
            estimate = candidate
            j += 1
        plan.append(Batch(tuple(rows), ckpt, estimate))
        i = j
    return plan


def describe_plan(plan: Sequence[Batch], budget: int | None) -> dict[str, Any]:
    """What the plan chose, for logs and provenance."""
    sizes: dict[str, int] = {}
    for b in plan:
        sizes[str(len(b.rows))] = sizes.get(str(len(b.rows)), 0) + 1
    estimates = [b.estimate for b in plan if b.estimate is not None]
    return {"budget_bytes": budget, "batches": len(plan), "batch_sizes": sizes,  # batch size -> how many batches
            "checkpointed_batches": sum(b.checkpointing for b in plan),
            "max_estimate_bytes": max(estimates) if estimates else None}
