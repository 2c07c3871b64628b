"""The FlashVSR network. Imports only torch, einops, safetensors and ``flashvsr_q.attention``.

    from flashvsr_q.model import FlashVSR, get_config, load_official
    model = load_official("FlashVSR-v1.1/")                    # or FlashVSR(get_config("small"))
    stream = FlashVSRStream(model, noise=SeededNoise(0, 16, H // 8, W // 8))
"""

from flashvsr_q.model.configs import PRESETS, FlashVSRConfig, get_config
from flashvsr_q.model.dit import DiTConditioning, KVCache, WanDiT, count_parameters
from flashvsr_q.model.flashvsr import PIPELINES, FlashVSR
from flashvsr_q.model.loading import OFFICIAL_FILES, infer_config, is_official_layout, load_official, save_official
from flashvsr_q.model.lq_proj import LQProjection, LQProjState
from flashvsr_q.model.streaming import (
    ChunkOutput,
    FlashVSRStream,
    SeededNoise,
    chunk_lr_ranges,
    padded_length,
    run_clip,
    tensor_noise,
)
from flashvsr_q.model.tc_decoder import DecoderState, TCDecoder
from flashvsr_q.model.wan_vae import (
    WAN_VAE_PRESETS,
    FeatureCache,
    TileSettings,
    WanVAEConfig,
    WanVAEDecoder,
    WanVAEStream,
    get_wan_vae_config,
)
from flashvsr_q.model.wan_vae_file import WAN_VAE_FILE, load_wan_vae, save_wan_vae, synthetic_wan_vae_state

__all__ = [
    "OFFICIAL_FILES", "PIPELINES", "PRESETS",
    "ChunkOutput", "DecoderState", "DiTConditioning", "FlashVSR", "FlashVSRConfig",
    "FlashVSRStream", "KVCache", "LQProjState", "LQProjection", "SeededNoise", "TCDecoder", "WanDiT",
    "chunk_lr_ranges", "count_parameters", "get_config", "infer_config", "is_official_layout", "load_official",
    "padded_length", "run_clip", "save_official", "tensor_noise",
    "WAN_VAE_FILE", "WAN_VAE_PRESETS", "FeatureCache", "TileSettings", "WanVAEConfig", "WanVAEDecoder", "WanVAEStream",
    "get_wan_vae_config", "load_wan_vae", "save_wan_vae", "synthetic_wan_vae_state",
]
