"""Quantization-aware fine-tuning: ``system`` (the recipe, fake quantization matching the deployed schemes, the
Lightning module, run and export) and ``data`` (clips, degradations, held-out measurement)."""
