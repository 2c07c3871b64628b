"""End to end: ``flashvsr-q app`` in a subprocess, driven by headless chromium through Playwright.

A synthetic ``test``-size checkpoint and an 8-frame 32x32 clip with audio keep the run short on a CPU (fp32).
The test uploads the clip, asks for the pre-flight estimate, upscales, and checks the result that the page offers
for download: 8 frames of 128x128 (x4) with the audio kept. It also checks that a bad checkpoint path comes back
as a one-line error message, that Cancel stops a run, and saves screenshots to the test's folder.
"""

from __future__ import annotations

import urllib.parse

import pytest
from app.app_support import (
    browser_page,
    fetch,
    make_checkpoint,
    make_clip,
    probe,
    require_browser,
    running_app,
    status_text,
    toast_text,
    type_into,
    upload,
    wait_status,
)
from helpers import random_model

from flashvsr_q.quant import load_recipe, resolve_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_upscale_in_the_browser(tmp_path):
    chromium = require_browser()
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    clip = make_clip(tmp_path / "clip.mp4", frames=8, size=(32, 32))
    long_clip = make_clip(tmp_path / "long.mp4", frames=33, size=(32, 32), audio=False)
    with running_app(tmp_path, checkpoint) as (url, out), browser_page(chromium) as page:
        page.goto(url)
        page.locator("#upscale-run").wait_for(timeout=30_000)
        upload(page, "upscale-input", clip)
        page.locator("#upscale-input-info", has_text="32x32").wait_for(timeout=30_000)

        # pre-flight estimate, before anything runs
        page.click("#upscale-estimate")
        estimate = wait_status(page, "upscale-status", "estimated peak device memory", timeout=60)
        assert "32x32 -> 128x128" in estimate

        page.click("#upscale-run")
        done = wait_status(page, "upscale-status", "done: ", timeout=120)
        assert "8 frames 32x32 -> 128x128" in done
        page.locator("#upscale-output-video video").wait_for(timeout=30_000)
        page.locator("#upscale-compare img").first.wait_for(timeout=30_000)

        # the file offered for download: 4x the size, every frame, the audio kept
        link = page.locator("#upscale-result a").first
        link.wait_for(timeout=30_000)
        href = urllib.parse.urljoin(url, link.get_attribute("href"))
        result = probe(fetch(href, tmp_path / "downloaded.mp4"))
        assert result == {"frames": 8, "width": 128, "height": 128, "audio": True}
        page.screenshot(path=str(tmp_path / "upscale.png"), full_page=True)

        # Quantize: the per-layer plan of the shipped int8 recipe, then export it as a compressed checkpoint
        page.get_by_role("tab", name="Quantize").click()
        page.click("#quantize-check")
        plan = wait_status(page, "quantize-status", "int8_weight_only", timeout=60)
        expected = resolve_plan(load_recipe("int8-weight-only"), random_model("test"), "cpu")
        assert f"{len(expected.quantized)} quantized" in plan  # the DiT, the LQ projection and the decoder
        type_into(page, "quantize-name", "int8-test")
        page.click("#quantize-export")
        wait_status(page, "quantize-status", "done: ", timeout=60)
        assert (out / "checkpoints" / "int8-test" / "manifest.json").is_file()
        page.screenshot(path=str(tmp_path / "quantize.png"), full_page=True)
        page.get_by_role("tab", name="Upscale").click()

        # a failure is one readable line, not a stack trace
        type_into(page, "upscale-checkpoint", str(tmp_path / "no-such-checkpoint"))
        page.click("#upscale-estimate")
        message = toast_text(page)
        assert "no-such-checkpoint" in message and "does not exist" in message
        assert "Traceback" not in message and "Traceback" not in status_text(page, "upscale-status")

        # Cancel stops a running upscale (33 frames: several chunks, the library checks the event between them)
        type_into(page, "upscale-checkpoint", str(checkpoint))
        upload(page, "upscale-input", long_clip)
        page.locator("#upscale-input-info", has_text="33 frames").wait_for(timeout=30_000)
        page.click("#upscale-run")
        wait_status(page, "upscale-status", "starting", timeout=30)
        page.click("#upscale-cancel")
        cancelled = wait_status(page, "upscale-status", "cancelled", timeout=60)
        assert "done: " not in cancelled
