"""Quantization tests run single-threaded: on two shared cores, OpenMP spin-waiting makes two threads many times
slower than one under load."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
