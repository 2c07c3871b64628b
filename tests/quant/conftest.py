"""Quantization tests run single-threaded: on two shared cores, OpenMP spin-waiting makes two threads many times
slower than one under load."""

from __future__ import annotations

import pytest
from helpers import one_torch_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield
