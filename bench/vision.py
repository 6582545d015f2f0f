"""Camera pipeline benchmark: per-stage cost, cameras per core with and without the motion gate,
person-event recall in both modes, and memory with four cameras. Ratios are against the
every-frame baseline measured in the same run.

    .venv/bin/python bench/vision.py [--model default|fast] [--rss-seconds 20]

The stream is 640x360 at 5 fps, built from the committed test clips (tests/data, real footage
except the synthetic smoke clip, which this bench does not use):
  - still: 60 s of an empty real scene (the first 3 s of smoke_synthetic.mp4, before the smoke,
    played back and forth: only sensor noise changes),
  - tree: 10 s of a tree in the wind (tree_motion.mp4, scaled): motion, nobody,
  - people: 31.5 s of people walking (vtest_people.mp4, centre 640x360 crop).
So people are in view 31 % of the time. The cost of each part is printed too, so the capacity
for another mix can be worked out. The process is pinned to one CPU and OpenCV to one thread:
"one core" is literal. Decoding is measured (OpenCV/FFmpeg, H.264) and included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edge.vision.pipeline import CameraPipeline, shared_detector  # noqa: E402
from edge.vision.sources import Frame  # noqa: E402
from edge.vision.tracker import iou  # noqa: E402
from tests.vision_context import DATA, RecordingContext, vision_config  # noqa: E402

FPS = 5.0
SIZE = (640, 360)
CROP_Y = 60  # people clip: rows 60..420 of 640x480
VTEST_FIRST, VTEST_SCALE = 480, 640 / 768


def stream() -> Iterator[tuple[str, np.ndarray, float, int | None]]:
    """(segment, frame, seconds spent decoding it, people-clip frame index or None)."""
    # still: frames 0..29 of the smoke clip (before the smoke), back and forth, 60 s at 5 fps
    still, still_decode = read(DATA / "smoke_synthetic.mp4", 30)
    order = list(range(0, 30, 2)) + list(range(28, 0, -2))
    for i in range(int(60 * FPS)):
        k = order[i % len(order)]
        yield "still", still[k], still_decode[k], None
    tree, tree_decode = read(DATA / "tree_motion.mp4", 150)
    for k in range(0, 150, 3):  # 15 fps -> 5 fps
        yield "tree", cv2.resize(tree[k], SIZE), tree_decode[k], None
    cap = cv2.VideoCapture(str(DATA / "vtest_people.mp4"))
    checked = hand_checked()
    index = 0
    while True:
        t0 = time.perf_counter()
        ok, image = cap.read()
        spent = time.perf_counter() - t0
        if not ok:
            break
        if index % 2 == 0 or index in checked:
            yield "people", image[CROP_Y : CROP_Y + SIZE[1]].copy(), spent, index
        index += 1
    cap.release()


def read(path: Path, n: int) -> tuple[list[np.ndarray], list[float]]:
    cap = cv2.VideoCapture(str(path))
    frames, spent = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        ok, image = cap.read()
        spent.append(time.perf_counter() - t0)
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames, spent


def hand_checked() -> dict[int, list[list[float]]]:
    truth = json.loads((DATA / "vtest_person_boxes.json").read_text())["frames"]
    out = {}
    for name, boxes in truth.items():
        people = []
        for box in boxes["people"]:
            x1, y1, x2, y2 = (v * VTEST_SCALE for v in box)
            if CROP_Y <= y2 <= CROP_Y + SIZE[1]:  # feet inside the crop
                people.append([x1, y1 - CROP_Y, x2, y2 - CROP_Y])
        out[int(name[:4]) - VTEST_FIRST] = people
    return out


def run_mode(model: str, gated: bool) -> dict:
    cam = {"name": "bench", "file": "unused.mp4", "motion": {"enabled": gated}}
    ctx = RecordingContext(vision_config(cam, model=model))
    detector = shared_detector(model, 1)
    pipeline = CameraPipeline(ctx, ctx.config.vision.cameras[0], detector)
    detector.detect(np.zeros((SIZE[1], SIZE[0], 3), np.uint8))  # load + warm up, not timed
    checked = hand_checked()
    cpu: dict[str, list[float]] = defaultdict(list)
    stages: dict[str, list[float]] = defaultdict(list)
    found = people = 0
    for seq, (segment, image, decode_s, index) in enumerate(stream(), start=1):
        t = seq / FPS
        c0 = time.process_time()
        pipeline.process(Frame(image, seq, t, time.monotonic()))
        cpu[segment].append((time.process_time() - c0) * 1e3 + decode_s * 1e3)
        stages["decode_ms"].append(decode_s * 1e3)
        for key, value in pipeline.last_timings.items():
            stages[key].append(value)
        if "detect_ms" in pipeline.last_timings:
            for key, value in detector.last_timings.items():
                stages[f"detect.{key}"].append(value)
        if index is not None and index in checked:
            # people with a person event out: tracks that are reported, where they are now
            live = [tr.predicted(t) for tr in pipeline.tracker.tracks if tr.reported]
            for person in checked[index]:
                people += 1
                found += any(iou(person, box) >= 0.4 for box in live)
    pipeline.end_of_stream()
    frames = sum(len(v) for v in cpu.values())
    total = sum(sum(v) for v in cpu.values())
    return {
        "frames": frames,
        "ms_per_frame": total / frames,
        "segments": {k: (len(v), statistics.fmean(v)) for k, v in cpu.items()},
        "stages": {k: (len(v), statistics.median(v)) for k, v in stages.items()},
        "detector_runs": pipeline.counters["detector_runs"],
        "starts": len(ctx.of("person", "start")),
        "recall": found / max(people, 1),
        "people": people,
    }


def rss_child(model: str, seconds: float) -> None:
    """Four real camera pipelines on file sources, as the gateway runs them; prints peak RSS."""
    import psutil

    clips = ["vtest_people.mp4", "tree_motion.mp4", "smoke_synthetic.mp4", "vtest_people.mp4"]
    cams = [
        {"name": f"cam{i}", "file": str(DATA / clip), "loop": True, "fps": FPS}
        | ({"smoke": {"enabled": True}} if i == 2 else {})
        for i, clip in enumerate(clips)
    ]
    from edge.vision.pipeline import build_pipelines

    ctx = RecordingContext(vision_config(*cams, model=model))
    pipelines = build_pipelines(ctx)
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,)) for p in pipelines]
    for th in threads:
        th.start()
    proc = psutil.Process()
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        peak = max(peak, proc.memory_info().rss)
    stop.set()
    for th in threads:
        th.join(10)
    for p in pipelines:
        p.close()
    frames = sum(p.counters["frames"] for p in pipelines)
    print(
        json.dumps({"rss_mb": peak / 2**20, "frames": frames, "threads": threading.active_count()})
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--rss-seconds", type=float, default=20.0)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    if args.rss_child:
        rss_child(args.model, args.rss_seconds)
        return 0

    print(f"model {args.model!r}, 1 detector thread, pinned to one CPU, 640x360 @ {FPS:g} fps")
    base = run_mode(args.model, gated=False)
    gated = run_mode(args.model, gated=True)
    print("\nper-stage median ms per frame where the stage ran (every-frame run | gated run):")
    for key in sorted(set(base["stages"]) | set(gated["stages"])):
        b = base["stages"].get(key, (0, 0.0))
        g = gated["stages"].get(key, (0, 0.0))
        print(f"  {key:24s} {b[1]:7.2f} ms ({b[0]:4d} frames) | {g[1]:7.2f} ms ({g[0]:4d} frames)")
    print("\nmean CPU ms per frame by segment (decode + pipeline):")
    for seg in base["segments"]:
        n, b = base["segments"][seg]
        _, g = gated["segments"][seg]
        print(f"  {seg:7s} {n:4d} frames: every frame {b:6.1f} ms, gated {g:6.1f} ms")
    cap_b = 1000.0 / (base["ms_per_frame"] * FPS)
    cap_g = 1000.0 / (gated["ms_per_frame"] * FPS)
    people_b = 1000.0 / (base["segments"]["people"][1] * FPS)
    people_g = 1000.0 / (gated["segments"]["people"][1] * FPS)
    print("\ncameras one core sustains (640x360 @ 5 fps), the mix above:")
    print(f"  detector on every frame : {cap_b:5.1f}  ({base['ms_per_frame']:.1f} ms/frame)")
    print(f"  motion gated            : {cap_g:5.1f}  ({gated['ms_per_frame']:.1f} ms/frame)")
    print(f"  ratio gated/every-frame : {cap_g / cap_b:5.2f}x  (target >= 3x)")
    print(f"  people in view all the time: {people_b:.1f} vs {people_g:.1f} cameras")
    print(
        f"  detector runs: {base['detector_runs']} vs {gated['detector_runs']} of "
        f"{base['frames']} frames"
    )
    print("\nperson events on the people segment (recall at hand-checked frames, IoU >= 0.4):")
    for name, r in (("every frame", base), ("gated", gated)):
        print(
            f"  {name:12s}: {r['starts']} person starts, recall {r['recall']:.3f} "
            f"of {r['people']} hand-checked people"
        )
    print(
        f"\n4 cameras (people, tree, smoke with smoke cues, people; file sources at 5 fps, one "
        f"shared detector), peak RSS over {args.rss_seconds:g} s (target <= 150 MB):"
    )
    for label, extra in (("glibc defaults", {}), ("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"})):
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", "--model", args.model]
            + ["--rss-seconds", str(args.rss_seconds)],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ | extra,
        )
        rss = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {label:20s}: {rss['rss_mb']:5.0f} MB ({rss['frames']} frames analysed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
