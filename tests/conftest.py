"""Shared fixtures; plain helpers live in tests/helpers.py (import them as `from helpers import ...`)."""

import pytest
import torch
from helpers import random_model

from flashvsr_q.model import FlashVSR


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_model() -> FlashVSR:
    return random_model("test")
