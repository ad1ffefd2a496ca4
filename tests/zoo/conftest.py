"""Shared fixtures of the zoo tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Each zoo test module runs at one torch thread (the zoo's trainers are bit-for-bit deterministic per
    thread count, and the cards are measured at one), then restores the caller's setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
