"""Post-training quantization of FlashVSR: schemes, recipes, one verb, compressed checkpoints.

The flow, top to bottom (every step can be printed or checked before the next one runs):

    from flashvsr_q.quant import load_recipe, resolve_plan, quantize_model, save_compressed, load_compressed

    recipe = load_recipe("int8-weight-only")            # recipes/int8-weight-only.yaml, or any path to a YAML file
    plan = resolve_plan(recipe, model, device="cpu")   # per-layer plan; raises RecipeError / BackendUnavailable
    print(plan.format())                                # what will happen to every layer, before any weight changes
    quantize_model(model, plan, calibration=None)       # in place: swaps weights / modules layer by layer
    save_compressed(model, "out/", recipe, plan)        # manifest.json + safetensors, written atomically
    model = load_compressed("out/", dtype=torch.bfloat16, device="cuda")   # or flashvsr_q.checkpoints.load_checkpoint

    # an official folder, quantized layer by layer from the memory-mapped file (never two float copies in RAM):
    model, plan = quantize_official("FlashVSR-v1.1/", plan_or_recipe, dtype=torch.bfloat16, device="cpu")

Modules (each one concept):

- ``schemes``: ``Scheme`` (a frozen dataclass wrapping a torchao v2 config or a bitsandbytes module) and the
  registry ``SCHEMES`` filled by ``@register_scheme``. Names: ``int8_weight_only``, ``w8a8_int8``,
  ``w8a8_int8_static``, ``fp8_weight_only``, ``w8a8_fp8``, ``bnb_int8``, ``nf4``, ``int4_weight_only``,
  ``w4a8_int``, ``w8a8_int8_convrot``, ``w4a8_int8_convrot``. ``get_scheme(name, **options)``;
  ``scheme.unavailable(device) -> reason | None``;
  ``scheme.nearest_available(device)``; ``scheme.quantize(linear, layer_calibration) -> nn.Module``.
- ``recipes``: ``Recipe`` (YAML: ``keep:`` regex list, ``rules:`` regex -> scheme, metadata, ``calibration:``,
  ``smoothquant:``), ``load_recipe``, ``resolve_plan(recipe, model, device) -> QuantPlan`` (``LayerPlan`` per
  parameter-holding layer), ``RecipeError``.
- ``ptq``: ``quantize_model``, ``quantize_official``.
- ``stats``: the calibration hand-off types below (``LayerCalibration``, ``CalibrationStats``).
- ``checkpoint``: ``save_compressed``, ``load_compressed``, ``read_manifest``, ``verify_files``.
- ``report``: ``inspect_checkpoint(path) -> dict`` and ``format_inspection`` (``flashvsr-q inspect``).
- ``convrot``: the ConvRot rotation (regular Hadamard groups), its int8 linear and modules.
- ``comfy``: ComfyUI's native ``comfy_quant`` DiT file: ``to_comfy``, ``write_comfy``, ``read_comfy`` /
  ``from_comfy``, ``build_linear``, ``apply_comfy``.
- ``export``: ``export_fp8_official`` (official file layout, ComfyUI "scaled fp8" convention) and its reader.
- ``measure``: file sizes and peak RSS of quantizing the official-size DiT (``python tools/quant_measure.py``).

Calibration hand-off (implemented by ``calibration`` / ``observers`` / ``smoothquant`` / ``sensitivity``):

    @dataclass
    class LayerCalibration:                  # one entry per nn.Linear fqn, e.g. "dit.blocks.0.ffn.2"
        input_absmax: torch.Tensor           # [in_features] per-channel max |x| of the layer INPUT over the
                                             #   calibration set (a 0-d tensor is accepted: per-tensor max)
        smoothing: torch.Tensor | None       # [in_features] SmoothQuant factors s (x / s, W * s); None = no smoothing
        num_samples: int = 0                 # tokens seen (informational)

    @dataclass
    class CalibrationStats:
        layers: dict[str, LayerCalibration]
        source_hash: str                     # SHA-256 identifying the calibration footage / settings
        meta: dict                           # free-form JSON (observer, percentiles, alpha, ...)
        def save(path) / load(path)          # one safetensors file: "<fqn>.input_absmax", "<fqn>.smoothing",
                                             #   JSON metadata; `flashvsr-q quantize --calibration STATS` reads it

How ``quantize_model(model, plan, calibration)`` uses it:

- ``w8a8_int8_static``: the static per-tensor activation scale is ``max(input_absmax / s) / 127`` (``s`` = the
  smoothing vector, or 1). A planned static layer without an entry is an error naming the layer.
- recipes with ``smoothquant:`` (``calibration: required``): every planned layer needs ``smoothing``; the weight
  columns are multiplied by ``s`` before quantization and the inverse is applied to the activation at run time
  (torchao ``Int8Tensor.act_pre_scale``), so the smoothing itself is exact. ``alpha`` from the recipe is for the
  code that computes ``s`` (``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``); quantize only applies ``s``.
- Without statistics, a recipe that needs them fails before any weight changes, saying which recipe and what
  to run (``flashvsr-q calibrate``).
"""

from flashvsr_q.quant.checkpoint import load_compressed, read_manifest, save_compressed, verify_files
from flashvsr_q.quant.ptq import quantize_model, quantize_official
from flashvsr_q.quant.recipes import (
    LayerPlan,
    QuantPlan,
    Recipe,
    RecipeError,
    load_recipe,
    model_layers,
    parse_recipe,
    resolve_plan,
)
from flashvsr_q.quant.schemes import SCHEMES, Scheme, get_scheme, register_scheme
from flashvsr_q.quant.stats import CalibrationStats, LayerCalibration

__all__ = [
    "SCHEMES", "CalibrationStats", "LayerCalibration", "LayerPlan", "QuantPlan", "Recipe", "RecipeError", "Scheme",
    "get_scheme", "load_compressed", "load_recipe", "model_layers", "parse_recipe", "quantize_model",
    "quantize_official", "read_manifest", "register_scheme", "resolve_plan", "save_compressed", "verify_files",
]
