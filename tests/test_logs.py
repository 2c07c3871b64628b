"""Known library noise is dropped by its exact text; everything else still reaches the user."""

from __future__ import annotations

import logging
import subprocess
import sys

import flashvsr_q  # noqa: F401  installs the filters


def test_only_the_known_messages_are_dropped(capsys):
    handler = logging.StreamHandler(sys.stderr)
    noise = {"torch.utils._pytree": "<enum 'KernelPreference'> is an Enum subclass and is now natively supported",
             "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community: offline"}
    for name, message in noise.items():
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            logger.warning(message)
            logger.warning("something else worth seeing")
        finally:
            logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("something else worth seeing") >= 2  # torch also prints its own records through its handler
    assert "Enum subclass" not in err and "kernels-community" not in err


def test_importing_the_quantization_stack_prints_no_known_noise():
    code = ("import flashvsr_q.quant.schemes, torchao.quantization, bitsandbytes\n"
            "import bitsandbytes.backends.cpu.ops\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stderr
    assert "Enum subclass" not in err and "kernels-community" not in err, err
