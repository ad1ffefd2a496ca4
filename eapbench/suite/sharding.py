"""Dividing a run over machines and GPUs: shards of the pairs, GPUs of an xdist worker.

- ``pytest suites/ --shard I/N`` runs the I-th of N disjoint sets of the selected pairs
  (:func:`shard_pairs`: sorted by pair id, dealt round-robin, so every job of a CI matrix or a
  cluster's array computes the same split); ``eapbench report merge`` joins their reports.
- ``pytest suites/ -n K --device cuda`` on a node with several GPUs: each xdist worker sees only
  its own GPUs (:func:`worker_gpus`, pinned through ``CUDA_VISIBLE_DEVICES`` before CUDA starts),
  so K pairs are measured side by side, one per GPU (or one per GPU group with ``--device-map``).
"""

from __future__ import annotations

import re
from typing import Sequence, TypeVar

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``; a clear error for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise ValueError(f"--shard {text}: write I/N with 1 <= I <= N, e.g. --shard 1/4 (the first of four shards)")
    return int(m.group(1)), int(m.group(2))


def shard_pairs(pairs: Sequence[T], index: int, count: int, key=lambda p: p.id) -> list[T]:
    """Shard ``index`` (1-based) of ``count``: the pairs sorted by id, dealt round-robin."""
    ordered = sorted(pairs, key=key)
    return [p for i, p in enumerate(ordered) if i % count == index - 1]


def worker_gpus(worker: str, n_workers: int, visible: Sequence[str]) -> list[str]:
    """The GPUs (entries of ``visible``) that xdist worker ``gw<k>`` of ``n_workers`` should see: an
    equal slice each when there are enough GPUs, else one GPU shared round-robin."""
    m = re.fullmatch(r"gw(\d+)", worker)
    if not m:
        raise ValueError(f"not an xdist worker id: {worker!r}")
    k = int(m.group(1))
    if not visible:
        return []
    per = len(visible) // n_workers
    if per >= 1:
        return list(visible[k * per:(k + 1) * per])
    return [visible[k % len(visible)]]
