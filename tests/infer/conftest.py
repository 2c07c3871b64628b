"""Fixtures of the upscaler tests; helpers live in upscale_support.py (`from infer.upscale_support import ...`)."""

from infer.upscale_support import checkpoint_dir, test_model  # noqa: F401 (fixtures, re-exported for pytest)
