"""Known, harmless messages that libraries print on every import, filtered out by their exact text.

Only these messages are dropped, on the loggers that emit them; every other warning still reaches the user.

- torch: "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile ...", logged
  by ``torch.utils._pytree`` when torchao registers its enums (a deprecation aimed at torchao, not at our users).
- bitsandbytes: "Failed to load CPU gemm_4bit_forward from kernels-community: ...", logged by its CPU backend when the
  optional ``kernels`` package cannot fetch a kernel from the hub (flashvsr-q never downloads at run time; the
  built-in CPU path is used instead).
"""

from __future__ import annotations

import logging

KNOWN_NOISE = {
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}


class DropMessages(logging.Filter):
    """Drops records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_known_noise() -> None:
    """Install the filters (idempotent; the loggers need not exist yet, and nothing is imported)."""
    for name, fragments in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(fragments))
