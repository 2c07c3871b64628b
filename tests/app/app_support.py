"""Support for the GUI tests and screenshots (import as ``from app.app_support import ...``).

A running app (``flashvsr-q app`` in a subprocess, on a free port, with a synthetic ``test``-size checkpoint as
``FLASHVSR_Q_CHECKPOINT``), Debian's chromium driven headless by Playwright (never a downloaded browser), tiny
clips, and the few page actions the tests repeat.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENV_CHROMIUM = "FLASHVSR_Q_CHROMIUM"  # path of a chromium binary, if not on PATH


def find_chromium() -> str | None:
    """``$FLASHVSR_Q_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH."""
    env = os.environ.get(ENV_CHROMIUM)
    if env:
        return env if Path(env).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> str:
    """The chromium path; otherwise skip with the reason (or fail in CI, where the browser must be installed)."""
    missing = []
    for module in ("gradio", "playwright"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    chromium = find_chromium()
    if chromium is None:
        missing.append(f"a chromium browser (apt-get install chromium, or set ${ENV_CHROMIUM})")
    if missing:
        reason = "the GUI browser test needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(folder: Path) -> Path:
    """A synthetic official-layout checkpoint of the ``test`` preset (random weights)."""
    from helpers import random_model

    from flashvsr_q.model import save_official

    save_official(random_model("test"), folder)
    return folder


def make_clip(path: Path, frames: int = 8, size: tuple[int, int] = (32, 32), fps: int = 8, audio: bool = True,
              seed: int = 0) -> Path:
    """A short H.264 clip of a moving smooth pattern (``size`` = W, H), with a 440 Hz AAC tone."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"crf": "12", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        sound = out.add_stream("aac", rate=16000) if audio else None
        for t in range(frames):
            rgb = np.stack([127 + 100 * np.sin((xx + 3 * t) / (4 + c) + yy / 7 + phase[c]) for c in range(3)], -1)
            out.mux(video.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")))
        out.mux(video.encode())
        if sound is not None:
            n = 16000 * frames // fps
            tone = (0.3 * np.sin(np.arange(n) / 16000 * 2 * np.pi * 440)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = 16000
            out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def probe(path: Path) -> dict:
    """Frames, size and stream kinds of a video file (PyAV)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        return {"frames": frames, "width": v.codec_context.width, "height": v.codec_context.height,
                "audio": len(c.streams.audio) > 0}


@contextmanager
def running_app(work: Path, checkpoint: Path, port: int | None = None, timeout: float = 90):
    """``flashvsr-q app`` in a subprocess; yields (base URL, output folder); stops it afterwards."""
    port = port or free_port()
    out = work / "app-output"
    env = {**os.environ, "FLASHVSR_Q_CHECKPOINT": str(checkpoint), "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(work / "gradio-tmp"), "PYTHONUNBUFFERED": "1"}
    log_path = work / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flashvsr_q.cli", "app", "--port", str(port),
                                 "--output-dir", str(out)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def browser_page(chromium: str, width: int = 1400, height: int = 1000):
    """A Playwright page in headless Debian chromium (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


# ---------------------------------------------------------------------------------------------------------------
# page actions (Gradio components located by their elem_id)
# ---------------------------------------------------------------------------------------------------------------


def upload(page, elem_id: str, *paths: Path) -> None:
    """Put ``paths`` into a gr.File (clearing what it held first)."""
    clear = page.locator(f"#{elem_id} button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator(f"#{elem_id} input[type=file]").set_input_files([str(p) for p in paths])


def choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` (its label) in a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.locator("[role=option]", has_text=option).first.click(timeout=10_000)


def type_into(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(text)
    box.press("Enter")


def status_text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea").input_value()


def wait_status(page, elem_id: str, text: str, timeout: float = 60) -> str:
    """Wait until the status box of ``elem_id`` contains ``text``; returns the box's text."""
    page.wait_for_function(
        "([id, text]) => { const t = document.querySelector(`#${id} textarea`); return t && t.value.includes(text); }",
        arg=[elem_id, text], timeout=timeout * 1000)
    return status_text(page, elem_id)


def toast_text(page, timeout: float = 30) -> str:
    """The text of the first error toast (``gr.Error``) that appears."""
    toast = page.locator(".toast-body").first
    toast.wait_for(timeout=timeout * 1000)
    return toast.inner_text()


def fetch(url: str, dst: Path) -> Path:
    with urllib.request.urlopen(url, timeout=30) as r:
        dst.write_bytes(r.read())
    return dst
