"""One function loads every checkpoint: the official layout, our compressed layout, or the shipped default.

    model = load_checkpoint()                         # $FLASHVSR_Q_CHECKPOINT, else the shipped small model
    model = load_checkpoint("FlashVSR-v1.1/")         # official files, unchanged
    model = load_checkpoint("int8/")                  # manifest.json + safetensors written by `flashvsr-q quantize`
    model = load_checkpoint("FlashVSR-v1/", variant="v1", recipe="int8-weight-only")   # quantized while loading
    model = load_checkpoint("flashvsr-v1.1", pipeline="full")   # the fetched release, with its Wan2.1 VAE decoder
    model = load_checkpoint("FlashVSR-v1.1/FlashVSR1_1-int8_convrot.safetensors")      # a ComfyUI-native DiT file

A ComfyUI-native DiT file (``flashvsr-q export``, or a community file: int8 ConvRot, int8, fp8, bf16) is run as
ComfyUI runs it (``quant.comfy.apply_comfy``). It holds the DiT only: the LQ projection, the decoder and the prompt
are the official files beside it (``LQ_proj_in.ckpt``, ``TCDecoder.ckpt``, ``posi_prompt.pth``, and
``flashvsr-q-config.json`` for a model that is not an official size), else those of the fetched official release
(``flashvsr-q fetch v1.1``). An official folder whose DiT file carries ``comfy_quant`` sidecars loads the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from flashvsr_q.errors import CheckpointError, FlashVSRError
from flashvsr_q.infer.checks import resolve_dtype
from flashvsr_q.model import (
    OFFICIAL_FILES,
    PIPELINES,
    PRESETS,
    WAN_VAE_FILE,
    WAN_VAE_PRESETS,
    FlashVSR,
    FlashVSRConfig,
    WanVAEDecoder,
    infer_config,
    is_official_layout,
    load_official,
    load_wan_vae,
)
from flashvsr_q.model.loading import CONFIG_SIDECAR, check_keys, expected_shapes, torch_file
from flashvsr_q.model.official_release import release_dir, release_name, resolve_release_name
from flashvsr_q.quant import (
    CalibrationStats,
    QuantPlan,
    Recipe,
    RecipeError,
    load_compressed,
    load_recipe,
    model_layers,
    quantize_model,
    quantize_official,
    resolve_plan,
)
from flashvsr_q.quant.checkpoint import read_manifest
from flashvsr_q.quant.comfy import SIDECAR, ComfyDiT, apply_comfy, read_comfy
from flashvsr_q.shipped import small_model_dir

ENV_CHECKPOINT = "FLASHVSR_Q_CHECKPOINT"
MANIFEST = "manifest.json"

RecipeLike = str | os.PathLike | Recipe
CalibrationLike = str | os.PathLike | CalibrationStats


def default_checkpoint() -> Path:
    """``$FLASHVSR_Q_CHECKPOINT`` if set, else the small model shipped with flashvsr-q."""
    env = os.environ.get(ENV_CHECKPOINT)
    return Path(env) if env else small_model_dir()


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"official"``, ``"compressed"`` or ``"comfy"`` (a ComfyUI-native DiT file, or an official folder whose DiT
    file is one); raises CheckpointError for anything else."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return "comfy"
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist" if not path.exists() else
                              f"{path} is not a checkpoint (a folder, or a ComfyUI-native DiT .safetensors file)")
    if (path / MANIFEST).is_file():
        return "compressed"
    if is_official_layout(path):
        return "comfy" if _has_comfy_sidecars(path / OFFICIAL_FILES["dit"]) else "official"
    raise CheckpointError(f"{path} is neither an official FlashVSR folder nor a flashvsr-q checkpoint "
                          f"(no {MANIFEST}, no diffusion_pytorch_model_streaming_dmd.safetensors)")


def _has_comfy_sidecars(dit_file: Path) -> bool:
    """True if the safetensors header lists a ``comfy_quant`` tensor (read from the header, not the data)."""
    try:
        with safe_open(str(dit_file), framework="pt") as f:
            return any(k.endswith("." + SIDECAR) for k in f.keys())
    except (SafetensorError, OSError):
        return False  # the official loader reports the unreadable file


def comfy_dit_file(path: str | os.PathLike) -> Path:
    """The DiT file of a ``"comfy"`` checkpoint: the file itself, or the official DiT file of a folder."""
    path = Path(path)
    return path if path.is_file() else path / OFFICIAL_FILES["dit"]


def comfy_companions(path: str | os.PathLike, variant: str = "v1.1") -> tuple[FlashVSRConfig | None, dict[str, Path]]:
    """(architecture, part -> file) for the LQ projection, decoder and prompt that go with a ComfyUI DiT file.

    Each part is the official file beside the DiT file, else the fetched official release's (``variant``). A
    ``flashvsr-q-config.json`` beside the file gives the architecture (a flashvsr-q model of another size; its
    parts must then be beside it too); without one it is None: the official architecture.
    Raises:
        CheckpointError: a part found nowhere, naming the file, where to put it and what fetches it.
    """
    folder = comfy_dit_file(path).parent
    config = None
    sidecar = folder / CONFIG_SIDECAR
    if sidecar.is_file():
        try:
            config = FlashVSRConfig.from_dict(json.loads(sidecar.read_text()))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{sidecar}: invalid config ({exc})") from None
    release = release_dir(variant) if config is None else None
    parts = {}
    for part in ("lq_proj", "decoder", "prompt"):
        name = OFFICIAL_FILES[part]
        found = [d / name for d in (folder, release) if d is not None and (d / name).is_file()]
        if not found:
            where = f"{folder}" + (f" or {release}" if release else "")
            raise CheckpointError(f"{comfy_dit_file(path).name} is a DiT only: {name} (the official "
                                  f"{part.replace('_', ' ')}) is needed in {where}; put it there or run "
                                  f"`flashvsr-q fetch {variant}`")
        parts[part] = found[0]
    return config, parts


def load_comfy(path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
               variant: str = "v1.1") -> tuple[FlashVSR, ComfyDiT]:
    """A ComfyUI-native DiT file with its companion parts (:func:`comfy_companions`), its quantized layers run as
    ComfyUI runs them; returns (model in eval mode, what the file holds)."""
    config, parts = comfy_companions(path, variant)
    file = read_comfy(comfy_dit_file(path), config)
    if config is None:
        config = PRESETS[f"flashvsr-{variant}"]
    with torch.device("meta"):
        model = FlashVSR(config)
    apply_comfy(model.dit, file, dtype, device)
    for part in ("lq_proj", "decoder"):
        module, state = getattr(model, part), torch_file(parts[part])
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{parts[part]}: expected a plain state dict of tensors")
        check_keys(expected_shapes(module), {k: tuple(v.shape) for k, v in state.items()}, parts[part])
        module.load_state_dict({k: v.to(device, dtype) for k, v in state.items()}, strict=True, assign=True)
    prompt = torch_file(parts["prompt"])
    if not isinstance(prompt, torch.Tensor) or tuple(prompt.shape) != tuple(model.prompt.shape):
        raise CheckpointError(f"{parts['prompt']}: expected a tensor of shape {tuple(model.prompt.shape)}")
    model.prompt = prompt.to(device, dtype)
    model.dit._rope_tables = None
    return model.eval(), file


def read_recipe_and_calibration(recipe: RecipeLike | None, calibration: CalibrationLike | None,
                                ) -> tuple[Recipe | None, CalibrationStats | None]:
    """Read a recipe (name, YAML path or ``Recipe``) and statistics (path or ``CalibrationStats``) up front, so
    that a bad name or file is refused before any weight is read; returns (recipe or None, statistics or None)."""
    if recipe is None:
        if calibration is not None:
            raise FlashVSRError("--calibration only applies with --recipe (the statistics are used while quantizing)")
        return None, None
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if calibration is None and recipe.needs_calibration:
        raise RecipeError(f"recipe {recipe.name} needs calibration statistics: run `flashvsr-q calibrate` and pass "
                          "the result with --calibration")
    if calibration is not None and not isinstance(calibration, CalibrationStats):
        calibration = CalibrationStats.load(calibration)
    return recipe, calibration


# ---------------------------------------------------------------------------------------------------------------
# names and the Full pipeline's VAE
# ---------------------------------------------------------------------------------------------------------------


def resolve_checkpoint(path: str | os.PathLike | None, full: bool = False) -> Path:
    """A checkpoint path as given, or the fetched folder of a release name (``flashvsr-v1.1``, ``flashvsr-v1``;
    ``full``: it must hold the Wan VAE too); None: :func:`default_checkpoint`.

    Raises:
        CheckpointError: a release name that is not downloaded (says what to run and where the files go).
    """
    path = Path(path) if path is not None else default_checkpoint()
    if not path.exists() and release_name(str(path)) is not None:
        return resolve_release_name(str(path), full)
    return path


def load_vae(path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16,
             device: torch.device | str = "cpu") -> WanVAEDecoder:
    """The Full pipeline's decoder: ``Wan2.1_VAE.pth`` in the checkpoint's folder (strict key/shape check).

    Raises:
        CheckpointError: a missing or bad file, in one line naming it, where it goes and the command that fetches it.
    """
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    file = folder / WAN_VAE_FILE
    try:
        return load_wan_vae(file, dtype=dtype, device=device)
    except CheckpointError as exc:
        if not file.is_file():
            raise
        raise CheckpointError(f"{exc}; --pipeline full needs the official {WAN_VAE_FILE} in {folder} "
                              "(`flashvsr-q fetch v1.1 --full` downloads it)") from None


@functools.cache
def _vae_layer_names() -> list[str]:
    with torch.device("meta"):
        return [f"vae.{name}" for name in model_layers(WanVAEDecoder(WAN_VAE_PRESETS["wan2.1"]))]


@functools.cache
def _model_layer_names() -> list[str]:
    with torch.device("meta"):
        return list(model_layers(FlashVSR(PRESETS["flashvsr-v1.1"])))


def split_recipe(recipe: Recipe) -> tuple[Recipe, Recipe | None]:
    """(the recipe for the FlashVSR model, the recipe for the Wan VAE decoder ``vae.*`` or None).

    An entry (keep pattern or rule) belongs to the VAE when it matches a VAE layer and no layer of the FlashVSR
    model; one that matches both belongs to both. So one recipe serves both pipelines: in Tiny the VAE entries are
    not used, and a recipe without VAE rules leaves the VAE in the compute dtype. A recipe with VAE rules must
    claim every VAE layer (keep or rule), as for any recipe.
    """
    vae_names, model_names = _vae_layer_names(), _model_layer_names()

    def hits(pattern: str, names: list[str]) -> bool:
        return any(re.fullmatch(pattern, name) for name in names)

    def vae_only(pattern: str) -> bool:
        return hits(pattern, vae_names) and not hits(pattern, model_names)

    main = dataclasses.replace(recipe, keep=tuple(p for p in recipe.keep if not vae_only(p)),
                               rules=tuple(r for r in recipe.rules if not vae_only(r.pattern)))
    rules = tuple(r for r in recipe.rules if hits(r.pattern, vae_names))
    if not rules:  # nothing to quantize in the VAE (a catch-all keep pattern may still match its layers)
        return main, None
    return main, dataclasses.replace(recipe, keep=tuple(p for p in recipe.keep if hits(p, vae_names)), rules=rules)


def attach_vae(model: FlashVSR, vae: WanVAEDecoder | None, recipe: Recipe | None = None,
               calibration: CalibrationStats | None = None, device: torch.device | str = "cpu",
               on_plan: Callable[[QuantPlan], None] | None = None) -> FlashVSR:
    """``model`` switched to the Full pipeline with ``vae`` (quantized by ``recipe``, the VAE part of a recipe from
    :func:`split_recipe`, named ``vae.*``); ``vae`` None leaves it as it is."""
    if vae is None:
        return model
    if recipe is not None:
        holder = torch.nn.Module()  # so that the plan's names are the model's: vae.decoder...
        holder.vae, holder.config = vae, vae.config
        plan = resolve_plan(recipe, holder, device)
        if on_plan is not None:
            on_plan(plan)
        quantize_model(holder, plan, calibration)
    model.vae = vae
    return model


def load_checkpoint(
    path: str | os.PathLike | None = None, *, dtype: torch.dtype | None = torch.bfloat16,
    device: torch.device | str = "cpu", variant: str | None = None, recipe: RecipeLike | None = None,
    calibration: CalibrationLike | None = None, on_plan: Callable[[QuantPlan], None] | None = None,
    pipeline: str = "tiny",
) -> FlashVSR:
    """Load any checkpoint onto ``device``, optionally quantizing it on the fly; the model is in eval mode.

    Args:
        path: folder, or a ComfyUI-native DiT ``.safetensors`` file (see the module docstring); None means
            :func:`default_checkpoint`. A release name (``flashvsr-v1.1``, ``flashvsr-v1``) means the folder
            ``flashvsr-q fetch`` fills.
        dtype: compute dtype of the unquantized parts (bf16 on GPU; fp32 is exact on CPU). None: a compressed
            checkpoint's own (the one it was quantized for, which some kernels require), else bf16 on CUDA and
            fp32 on the CPU.
        variant: for official folders, which LQ projection the weights are for ("v1" or "v1.1"; None: v1.1, the
            files cannot tell). Folders that record their architecture (a compressed manifest, a config sidecar) use
            what they record, and a ``variant`` that contradicts it is an error.
        recipe: a shipped recipe name, a YAML path or a ``Recipe`` (``flashvsr-q upscale --recipe``). An official
            folder is then read layer by layer and each planned layer quantized as it arrives, as
            ``flashvsr-q quantize`` does (never a float copy of the whole model); a compressed one is loaded, then
            its float layers quantized.
        calibration: ``CalibrationStats`` or the path of a statistics file (``flashvsr-q calibrate``), for recipes
            with static activation scales or SmoothQuant.
        on_plan: called with the resolved per-layer plan before any weight is quantized (and with the VAE's).
        pipeline: ``"tiny"`` (TCDecoder) or ``"full"``: also load the Wan2.1 VAE decoder from ``Wan2.1_VAE.pth``
            in the checkpoint's folder (``model.vae``); a recipe's entries that name ``vae.*`` layers quantize it
            (:func:`split_recipe`).
    Raises:
        CheckpointError: a missing, unreadable or mismatched folder. RecipeError / BackendUnavailable: a recipe that
        does not fit the model or the device, or needs statistics that were not given.

    Example:
        >>> import torch, flashvsr_q as fq
        >>> model = fq.load_checkpoint(dtype=torch.float32)     # the shipped small model
        >>> model.config.name
        'small'
    """
    if pipeline not in PIPELINES:
        raise FlashVSRError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    path = resolve_checkpoint(path, full=pipeline == "full")
    kind = checkpoint_kind(path)
    if dtype is None:
        dtype = (getattr(torch, read_manifest(path)["compute_dtype"]) if kind == "compressed"
                 else resolve_dtype(None, torch.device(device)))
    recipe, calibration = read_recipe_and_calibration(recipe, calibration)
    vae = load_vae(path, dtype=dtype, device=device) if pipeline == "full" else None  # small: checked first
    recipe, vae_recipe = split_recipe(recipe) if recipe is not None else (None, None)
    if kind == "comfy":
        if recipe is not None:
            raise FlashVSRError(f"{path} is a ComfyUI file, quantized as it was written; --recipe applies to "
                                f"official and flashvsr-q checkpoints")
        return attach_vae(load_comfy(path, dtype=dtype, device=device, variant=variant or "v1.1")[0], vae)
    if recipe is None:
        model = (load_compressed(path, dtype=dtype, device=device) if kind == "compressed"
                 else load_official(path, variant=variant or "v1.1", dtype=dtype, device=device))
    elif kind == "official":
        with torch.device("meta"):
            skeleton = FlashVSR(infer_config(path, variant or "v1.1"))
        plan = resolve_plan(recipe, skeleton, device)
        if on_plan is not None:
            on_plan(plan)
        model, _ = quantize_official(path, plan, dtype=dtype, device=device, calibration=calibration,
                                     variant=variant or "v1.1")
    else:
        model = load_compressed(path, dtype=dtype, device=device)
        plan = resolve_plan(recipe, model, device)
        if on_plan is not None:
            on_plan(plan)
        model = quantize_model(model, plan, calibration)
    if variant is not None and model.config.lq_variant != variant:
        raise CheckpointError(f"{path} records its LQ projection as {model.config.lq_variant}; --variant "
                              f"{variant} is only for official folders without a config (their files cannot tell)")
    return attach_vae(model, vae, vae_recipe, calibration, device, on_plan).eval()
