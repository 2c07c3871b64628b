"""Regional compilation gives the same output as eager (CPU inductor)."""

import pytest
from helpers import random_lr, random_model

from flashvsr_q.infer.compile import compile_blocks, is_compiled
from flashvsr_q.model import SeededNoise, run_clip


@pytest.mark.slow
def test_compiled_blocks_match_eager():
    model = random_model("test")
    model.set_attention("dense")
    lr = random_lr(33)
    eager, _ = run_clip(model, lr, SeededNoise(0, 16, 16, 16))
    assert compile_blocks(model) == len(model.dit.blocks) and is_compiled(model)
    compiled, _ = run_clip(model, lr, SeededNoise(0, 16, 16, 16))
    assert ((compiled - eager).norm() / eager.norm()) < 1e-5


def test_flex_is_not_compiled_on_cpu():
    model = random_model("test")
    model.set_attention("flex")
    with pytest.raises(ValueError, match="flex"):
        compile_blocks(model)
    assert not is_compiled(model)
