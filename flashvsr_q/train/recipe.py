"""The training recipe: a YAML file mapped onto typed dataclasses (unknown keys are errors).

    recipe = load_recipe("recipes/train-small.yaml")
    recipe.optim.decoder_lr, recipe.train.max_steps, recipe.data.size ...
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flashvsr_q.errors import FlashVSRError


class RecipeError(FlashVSRError, ValueError):
    """A training recipe that cannot be used (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class DataSettings:
    """Clips: ``size`` output pixels square (multiple of 128), ``batch_size`` clips per step, source weights
    for bikes / bigbuckbunny (training part) / panned stills."""

    size: int = 128
    batch_size: int = 1
    weights: tuple[float, float, float] = (0.35, 0.35, 0.3)


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio``; the decoder has its own learning rate and
    trains alone (DiT and LQ projection frozen, not even differentiated) for ``decoder_only_steps``."""

    lr: float = 5e-4
    decoder_lr: float = 2e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 20
    decoder_only_steps: int = 0
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    fan_in_ref: int = 288  # per-layer lr = lr * min(1, fan_in_ref / fan_in) (see system.fan_in_groups)


@dataclass(frozen=True)
class LossSettings:
    """Charbonnier on decoded frames vs HR (both in [-1, 1]) + ``temporal_weight`` x L1 on frame differences."""

    charbonnier_eps: float = 1e-3
    temporal_weight: float = 0.0


@dataclass(frozen=True)
class FitSettings:
    """One L-BFGS fit stage of the decoder (``flashvsr_q/train/decoder_fit.py``): ``rounds`` fresh batches of
    ``clips`` crops (``crop`` output px, ``latents`` latent frames each), ``iterations`` L-BFGS steps per batch."""

    rounds: int = 0
    clips: int = 32
    iterations: int = 30
    crop: int = 64
    latents: int = 2


@dataclass(frozen=True)
class FitStages:
    """Both run on a fresh model, before the gradient steps (a resumed run holds their result in ``last.ckpt``):
    ``path`` fits the designed picture path alone, then ``decoder`` every decoder weight with the DiT's latents
    (after the path fit nothing reads the latents; this stage opens that route before the DiT trains)."""

    path: FitSettings = field(default_factory=FitSettings)
    decoder: FitSettings = field(default_factory=FitSettings)


@dataclass(frozen=True)
class RunSettings:
    """Length and bookkeeping of the run."""

    max_steps: int = 600
    max_minutes: float | None = None
    checkpoint_every: int = 25
    threads: int = 2
    output_fit_clips: int = 0  # > 0: refit the decoder's last conv in closed form on this many clips before export


@dataclass(frozen=True)
class TrainRecipe:
    """A whole training recipe (see ``recipes/train-small.yaml``)."""

    model: str = "small"
    seed: int = 0
    decoder_init: str = "upscaler"  # "upscaler" (flashvsr_q.train.init) or "random" (PyTorch defaults)
    attention: str = "dense"
    local_range: int = 11
    sparse_ratio: float = 2.0
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    fit: FitStages = field(default_factory=FitStages)
    train: RunSettings = field(default_factory=RunSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainRecipe:
        """A copy with top-level fields or ``section__field`` entries changed (``train__max_steps=4``)."""
        top = {k: v for k, v in changes.items() if "__" not in k}
        for key, value in changes.items():
            if "__" in key:
                section, name = key.split("__", 1)
                top[section] = dataclasses.replace(top.get(section, getattr(self, section)), **{name: value})
        return dataclasses.replace(self, **top)

    @classmethod
    def from_dict(cls, data: dict) -> TrainRecipe:
        return build_settings(cls, data or {}, "recipe")


def build_settings(cls, data: dict, where: str):
    """A settings dataclass from a YAML mapping: typed fields, nested dataclasses, unknown keys are errors."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecipeError(f"{where}: unknown keys {unknown}; valid: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING \
            else fields[name].default
        if dataclasses.is_dataclass(default):
            kwargs[name] = build_settings(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise RecipeError(f"{where}.{name}: expected a list of {len(default)} numbers, got {value!r}")
            kwargs[name] = tuple(float(v) for v in value)
        elif isinstance(default, bool) or isinstance(value, bool):
            kwargs[name] = value
        elif isinstance(default, (int, float)) and not isinstance(value, (int, float)):
            raise RecipeError(f"{where}.{name}: expected a number, got {value!r}")
        else:
            kwargs[name] = type(default)(value) if isinstance(default, (int, float)) and value is not None else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


def load_recipe(path: str | os.PathLike) -> TrainRecipe:
    """Read and validate a YAML recipe."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from None
    recipe = TrainRecipe.from_dict(data)
    if recipe.decoder_init not in ("upscaler", "random"):
        raise RecipeError(f"{path}: decoder_init must be 'upscaler' or 'random', got {recipe.decoder_init!r}")
    if recipe.data.size % 128:
        raise RecipeError(f"{path}: data.size must be a multiple of 128, got {recipe.data.size}")
    return recipe
