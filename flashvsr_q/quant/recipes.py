"""Recipes: YAML that maps layer names to schemes, resolved against a model into a printable per-layer plan.

    kind: quantization                # what kind of recipe (recipes/ also holds training recipes)
    name: int8-weight-only
    description: int8 weights on every DiT block linear, the rest in bf16
    gpu: any CUDA GPU or CPU
    expected_memory: {dit_gb: 1.45}
    calibration: none                 # none | optional | required
    smoothquant: null                 # {alpha: 0.5}: needs calibration statistics with smoothing factors;
                                      # {alpha: 0.5, overrides: {'dit\\.blocks\\.\\d+\\.ffn\\.2': 0.75}}: per layer
    keep:                             # stays in the compute dtype; checked first
      - dit\\.patch_embedding
      - ...
    rules:                            # then these, in order; the first full regex match wins
      - {pattern: 'dit\\.blocks\\.\\d+\\.ffn\\.(0|2)', scheme: int8_weight_only, options: {granularity: per_row}}

A *layer* is a leaf module that holds parameters (``dit.blocks.3.ffn.0``, ``lq_proj.conv1``) or a parameter held
directly by a non-leaf module (``dit.blocks.3.modulation``, ``dit.head.modulation``, the ``prompt`` buffer).
Every layer must be claimed by exactly one entry (keep first, then rules in order), and every entry must claim at
least one layer: a recipe cannot silently leave a layer out or carry a dead pattern.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from flashvsr_q.errors import BackendUnavailable, FlashVSRError
from flashvsr_q.quant.schemes import SCHEMES, ConvWeightOnly, Scheme, get_scheme
from flashvsr_q.quant.smoothquant import alpha_for
from flashvsr_q.shipped import quantization_recipes

CALIBRATION_MODES = ("none", "optional", "required")
KIND = "quantization"
REQUIRED_FIELDS = ("kind", "name", "description", "gpu", "expected_memory", "keep", "rules")
OPTIONAL_FIELDS = ("calibration", "smoothquant", "notes")


class RecipeError(FlashVSRError):
    """A recipe is malformed or does not fit the model."""


@dataclass(frozen=True)
class Rule:
    pattern: str
    scheme: Scheme


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe. ``text`` is the YAML source, recorded verbatim in compressed manifests."""

    name: str
    description: str
    gpu: str
    expected_memory: dict
    keep: tuple[str, ...]
    rules: tuple[Rule, ...]
    calibration: str = "none"
    smoothquant: dict | None = None
    text: str = ""
    source: str = "<string>"

    @property
    def needs_calibration(self) -> bool:
        return self.calibration == "required"

    @property
    def alpha_overrides(self) -> dict[str, float]:
        """``smoothquant.overrides``: regex -> alpha, in recipe order (first full match wins); {} without any."""
        return dict((self.smoothquant or {}).get("overrides") or {})

    def smoothquant_alpha(self, fqn: str) -> float | None:
        """The SmoothQuant alpha of layer ``fqn``: its first matching override, else ``smoothquant.alpha``;
        None when the recipe declares no SmoothQuant."""
        if self.smoothquant is None:
            return None
        return alpha_for(fqn, self.smoothquant["alpha"], self.alpha_overrides)


def shipped_recipes() -> dict[str, Path]:
    """name -> path of every quantization recipe in ``recipes/`` (files with ``kind: quantization``)."""
    return quantization_recipes()


def runnable_recipes(device: torch.device | str) -> list[str]:
    """The shipped quantization recipes whose every scheme can run on ``device``."""
    device = torch.device(device)
    out = []
    for name, path in shipped_recipes().items():
        try:
            recipe = load_recipe(path)
        except RecipeError:
            continue
        if all(rule.scheme.unavailable(device) is None for rule in recipe.rules):
            out.append(name)
    return out


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A path as given, or the shipped ``recipes/<name>.yaml``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = shipped_recipes()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    names = sorted(shipped)
    raise RecipeError(f"no recipe {name_or_path!r}: not a file, and not a shipped recipe ({', '.join(names)})")


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """Parse and validate a recipe file (schema, scheme names and options, regexes); raises RecipeError.

    ``name_or_path``: the name of a shipped recipe (``int8-weight-only``, ``w8a8-int8``, ``nf4``, ...) or a YAML path.

    Example:
        >>> import flashvsr_q as fq
        >>> fq.load_recipe("int8-weight-only").needs_calibration
        False
    """
    path = recipe_path(name_or_path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    return parse_recipe(path.read_text(), source=str(path))


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping")
    fail = lambda msg: RecipeError(f"recipe {data.get('name', source)}: {msg}")  # noqa: E731
    if data.get("kind") != KIND:
        raise RecipeError(f"{source}: not a quantization recipe (expected kind: {KIND}, got {data.get('kind')!r})")
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    unknown = sorted(set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown field {', '.join(unknown)}"] if unknown else [])
        raise fail("; ".join(parts) + f" (fields: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)})")
    if not isinstance(data["keep"], list) or not all(isinstance(p, str) for p in data["keep"]):
        raise fail("keep: must be a list of regex strings")
    if not isinstance(data["rules"], list) or not data["rules"]:
        raise fail("rules: must be a non-empty list of {pattern, scheme, options} entries")
    if not isinstance(data["expected_memory"], dict):
        raise fail("expected_memory: must be a mapping (e.g. {dit_gb: 1.45})")
    calibration = data.get("calibration") or "none"
    if calibration not in CALIBRATION_MODES:
        raise fail(f"calibration: must be one of {', '.join(CALIBRATION_MODES)}, got {calibration!r}")
    smoothquant = data.get("smoothquant")
    if smoothquant is not None:
        if not isinstance(smoothquant, dict) or set(smoothquant) - {"alpha", "overrides"}:
            raise fail("smoothquant: must be a mapping with an optional alpha and per-layer overrides "
                       "(e.g. {alpha: 0.5, overrides: {'dit\\.blocks\\.\\d+\\.ffn\\.2': 0.75}})")
        alpha = smoothquant.setdefault("alpha", 0.5)
        overrides = smoothquant.setdefault("overrides", {}) or {}
        if not isinstance(overrides, dict):
            raise fail("smoothquant.overrides: must be a mapping {layer regex: alpha}")
        smoothquant["overrides"] = overrides
        for where, value in [("smoothquant.alpha", alpha)] + [
                (f"smoothquant.overrides '{p}'", v) for p, v in overrides.items()]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise fail(f"{where} must be in [0, 1], got {value!r}")
        for pattern in overrides:
            _compile(pattern, fail)
        if calibration != "required":
            raise fail("smoothquant needs calibration statistics: set calibration: required")

    for pattern in data["keep"]:
        _compile(pattern, fail)
    rules = []
    for i, entry in enumerate(data["rules"], 1):
        if not isinstance(entry, dict) or not {"pattern", "scheme"} <= set(entry) or set(entry) - {
                "pattern", "scheme", "options"}:
            raise fail(f"rule {i} must be a mapping with pattern, scheme and optional options")
        _compile(entry["pattern"], fail)
        name = entry["scheme"]
        if name not in SCHEMES:
            raise fail(f"rule {i} ({entry['pattern']}): unknown scheme {name!r}; choose one of "
                       f"{', '.join(sorted(SCHEMES))}")
        try:
            scheme = get_scheme(name, **(entry.get("options") or {}))
        except (ValueError, TypeError) as exc:
            raise fail(f"rule {i} ({entry['pattern']}): {exc}") from None
        if scheme.needs_calibration and calibration == "none":
            raise fail(f"rule {i}: scheme {name} needs activation statistics: set calibration: required")
        # SmoothQuant rescales Linear inputs; convolutions (conv_weight_only) are quantized unsmoothed beside it
        if smoothquant is not None and not scheme.supports_smoothing and not isinstance(scheme, ConvWeightOnly):
            raise fail(f"rule {i}: scheme {name} cannot apply SmoothQuant factors (use an int8 torchao scheme)")
        rules.append(Rule(entry["pattern"], scheme))
    return Recipe(name=str(data["name"]), description=str(data["description"]).strip(), gpu=str(data["gpu"]),
                  expected_memory=dict(data["expected_memory"]), keep=tuple(data["keep"]), rules=tuple(rules),
                  calibration=calibration, smoothquant=smoothquant, text=text, source=source)


def _compile(pattern, fail) -> re.Pattern:
    if not isinstance(pattern, str):
        raise fail(f"pattern {pattern!r} is not a string")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise fail(f"invalid regex {pattern!r} ({exc})") from None


# ---------------------------------------------------------------------------------------------------------------
# layers and plans
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPlan:
    """What happens to one layer. ``scheme`` None means kept in the compute dtype."""

    fqn: str
    kind: str  # module class name, or "Parameter" / "Buffer" for a bare tensor
    shape: tuple[int, ...]  # weight (or tensor) shape
    numel: int  # all parameters of the layer
    scheme: Scheme | None
    pattern: str


def model_layers(model: nn.Module) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """fqn -> (kind, shape, numel) for every layer (see module docstring), in state-dict order. Works on meta."""
    layers = {}
    for name, module in model.named_modules():
        tensors = [(n, t, True) for n, t in module._parameters.items() if t is not None] + [
            (n, t, False) for n, t in module._buffers.items()
            if t is not None and n not in module._non_persistent_buffers_set]
        if not tensors:
            continue
        if name and next(module.children(), None) is None:
            weight = module._parameters.get("weight", tensors[0][1])
            layers[name] = (type(module).__name__, tuple(weight.shape), sum(t.numel() for _, t, _ in tensors))
            continue
        for leaf, t, is_param in tensors:
            layers[f"{name}.{leaf}" if name else leaf] = ("Parameter" if is_param else "Buffer", tuple(t.shape),
                                                          t.numel())
    return layers


@dataclass
class QuantPlan:
    """The resolved recipe: one :class:`LayerPlan` per layer, in model order."""

    recipe: Recipe
    layers: dict[str, LayerPlan]
    device: str = "cpu"
    model_name: str = ""

    @property
    def quantized(self) -> dict[str, LayerPlan]:
        return {k: v for k, v in self.layers.items() if v.scheme is not None}

    @property
    def kept(self) -> dict[str, LayerPlan]:
        return {k: v for k, v in self.layers.items() if v.scheme is None}

    def schemes(self) -> dict[str, Scheme]:
        """Distinct schemes in use, by label."""
        return {p.scheme.label(): p.scheme for p in self.quantized.values()}

    def layer_schemes(self) -> dict[str, str | None]:
        return {k: (v.scheme.label() if v.scheme else None) for k, v in self.layers.items()}

    def format(self) -> str:
        """A compact, human-readable plan (groups of layers per scheme), printed before any weight changes."""
        q = self.quantized
        lines = [f"plan: recipe {self.recipe.name} on {self.device} for {self.model_name or 'model'}: "
                 f"{len(self.layers)} layers, {len(q)} quantized ({sum(p.numel for p in q.values()) / 1e6:.1f} M "
                 f"params), {len(self.kept)} kept ({sum(p.numel for p in self.kept.values()) / 1e6:.1f} M params)"]
        groups: dict[str, list[LayerPlan]] = {}
        for plan in self.layers.values():
            groups.setdefault(plan.scheme.label() if plan.scheme else "keep", []).append(plan)
        width = max(len(k) for k in groups)
        for label, plans in groups.items():
            millions = sum(p.numel for p in plans) / 1e6
            lines.append(f"  {label:<{width}}  {len(plans):4d} layers {millions:9.2f} M params")
            for name in compact_names([p.fqn for p in plans]):
                lines.append(f"  {'':<{width}}    {name}")
        return "\n".join(lines)


def resolve_plan(recipe: Recipe, model: nn.Module, device: torch.device | str = "cpu") -> QuantPlan:
    """Match ``recipe`` against ``model`` (meta is fine) and check the hardware; changes nothing.

    Raises:
        RecipeError: a pattern that claims no layer, a layer no entry claims, a scheme on a layer it cannot take.
        BackendUnavailable: a scheme that cannot run on ``device`` (the message names the nearest that can).
    """
    fail = lambda msg: RecipeError(f"recipe {recipe.name}: {msg}")  # noqa: E731
    layers = model_layers(model)
    entries = [(p, None, "keep") for p in recipe.keep] + [(r.pattern, r.scheme, f"rule {i}")
                                                           for i, r in enumerate(recipe.rules, 1)]
    claimed: dict[str, LayerPlan] = {}
    for pattern, scheme, where in entries:
        regex = re.compile(pattern)
        hits = [fqn for fqn in layers if regex.fullmatch(fqn)]
        fresh = [fqn for fqn in hits if fqn not in claimed]
        if not hits:
            raise fail(f"{where} pattern '{pattern}' matches no layer of this model "
                       f"(layers look like {', '.join(list(layers)[:3])}, ...)")
        if not fresh:
            raise fail(f"{where} pattern '{pattern}' only matches layers already claimed by earlier entries "
                       f"(e.g. {hits[0]} by '{claimed[hits[0]].pattern}')")
        for fqn in fresh:
            kind, shape, numel = layers[fqn]
            if scheme is not None:
                reason = scheme.check_layer(model.get_submodule(fqn) if kind not in ("Parameter", "Buffer")
                                            else nn.Parameter(torch.empty(0, device="meta")))
                if reason:
                    raise fail(f"{where} puts {fqn} ({kind} {list(shape)}) under {scheme.name}: {reason}")
            claimed[fqn] = LayerPlan(fqn, kind, shape, numel, scheme, pattern)
    unclaimed = [fqn for fqn in layers if fqn not in claimed]
    if unclaimed:
        more = f" and {len(unclaimed) - 5} more" if len(unclaimed) > 5 else ""
        raise fail(f"{len(unclaimed)} layer(s) neither kept nor quantized: {', '.join(unclaimed[:5])}{more} "
                   f"(add them to keep: or to a rule)")
    smoothed = [fqn for fqn, p in claimed.items() if p.scheme is not None and p.scheme.supports_smoothing]
    for pattern in recipe.alpha_overrides:
        if not any(re.fullmatch(pattern, fqn) for fqn in smoothed):
            raise fail(f"smoothquant.overrides pattern '{pattern}' matches no layer that is smoothed "
                       f"(smoothed layers look like {', '.join(smoothed[:2]) or 'none'}, ...)")
    for scheme in {p.scheme.label(): p.scheme for p in claimed.values() if p.scheme}.values():
        reason = scheme.unavailable(torch.device(device))
        if reason:  # the user picks recipes, not schemes: name recipes that run here, and the GPU flag
            here = [name for name in runnable_recipes(device) if name != recipe.name]
            gpu = "; on a GPU pass --device cuda" if torch.device(device).type == "cpu" and "CUDA" in reason else ""
            raise BackendUnavailable(f"recipe {recipe.name} cannot run on {device}: {scheme.name}: {reason}{gpu}; "
                                     f"recipes that run on {device}: {', '.join(here) or 'none'}")
    ordered = {fqn: claimed[fqn] for fqn in layers}
    config = getattr(model, "config", None)
    return QuantPlan(recipe, ordered, str(device), getattr(config, "name", ""))


# ---------------------------------------------------------------------------------------------------------------
# compact display of layer names
# ---------------------------------------------------------------------------------------------------------------


def _ranges(numbers: list[int]) -> str:
    numbers = sorted(set(numbers))
    out, start = [], numbers[0]
    for prev, cur in zip(numbers, numbers[1:] + [None]):
        if cur != prev + 1:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(out)


def _show(values: tuple[str, ...]) -> str:
    if len(values) == 1:
        return values[0]
    if all(v.isdigit() for v in values):
        return "{" + _ranges([int(v) for v in values]) + "}"
    return "{" + ",".join(values) + "}"


def compact_names(names: list[str]) -> list[str]:
    """``dit.blocks.0.ffn.0 ... dit.blocks.29.ffn.2`` -> ``['dit.blocks.{0-29}.ffn.{0,2}']``, exactly: each
    result stands for the full product of its alternatives, and together they are ``names`` (order kept)."""
    items = [tuple((p,) for p in name.split(".")) for name in names]
    changed = True
    while changed:
        changed = False
        for i in range(max((len(t) for t in items), default=0)):
            groups: dict[tuple, list[str]] = {}
            for item in items:  # items equal everywhere except position i merge into one
                if i >= len(item):
                    groups.setdefault((item, None), [])
                    continue
                values = groups.setdefault((item[:i], item[i + 1:], len(item)), [])
                values.extend(v for v in item[i] if v not in values)
            merged = []
            for key, values in groups.items():
                merged.append(key[0] if key[1] is None else key[0] + (tuple(values),) + key[1])
            changed |= len(merged) < len(items)
            items = merged
    return [".".join(_show(part) for part in item) for item in items]
