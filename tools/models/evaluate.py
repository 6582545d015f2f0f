"""Measure the person models on the project's own test data: recall and false persons on the
hand-checked pedestrian frames, detections on photos, latency per frame. Numbers for the model
cards (docs/models.md). Runs in the runtime venv:

    .venv/bin/python tools/models/evaluate.py [--models default,fast] [--threads 1]
        [--thresholds 0.3,0.4,0.5] [--extra-model path.tflite ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge.vision.detector import PersonDetector  # noqa: E402

DATA = ROOT / "tests" / "data"
PERSON_PHOTOS = ("astronaut.jpg",)
MATCH_IOU = 0.5


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def inside(a, region) -> float:
    """Share of box `a` that lies in `region`."""
    ix = max(0.0, min(a[2], region[2]) - max(a[0], region[0]))
    iy = max(0.0, min(a[3], region[3]) - max(a[1], region[1]))
    area = (a[2] - a[0]) * (a[3] - a[1])
    return ix * iy / area if area > 0 else 0.0


def score_frame(boxes, people, ignore) -> tuple[int, int]:
    """(true positives, false positives) of score-sorted `boxes` against hand-checked people."""
    matched: set[int] = set()
    tp = fp = 0
    for box in boxes:
        best, best_iou = None, MATCH_IOU
        for i, person in enumerate(people):
            overlap = iou(box, person)
            if i not in matched and overlap >= best_iou:
                best, best_iou = i, overlap
        if best is not None:
            matched.add(best)
            tp += 1
        elif any(inside(box, region) >= 0.5 or iou(box, region) >= MATCH_IOU for region in ignore):
            continue
        else:
            fp += 1
    return tp, fp


def evaluate(model: str, threads: int, thresholds: list[float]) -> dict:
    truth = json.loads((DATA / "vtest_person_boxes.json").read_text())["frames"]
    frames = {name: cv2.imread(str(DATA / "vtest_frames" / name)) for name in truth}
    photos = {p.name: cv2.imread(str(p)) for p in sorted((DATA / "photos").glob("*.jpg"))}
    low = min(thresholds)
    detector = PersonDetector(model, threads=threads, threshold=low)
    raw_frames = {name: detector.detect(img) for name, img in frames.items()}
    raw_photos = {name: detector.detect(img) for name, img in photos.items()}
    result = {"model": model, "file": detector.path.name, "input": list(detector.input_size)}
    people = sum(len(t["people"]) for t in truth.values())
    for threshold in thresholds:
        tp = fp = 0
        for name, found in raw_frames.items():
            boxes = [d.box for d in found if d.score >= threshold]
            a, b = score_frame(boxes, truth[name]["people"], truth[name]["ignore"])
            tp, fp = tp + a, fp + b
        on_photos = {
            name: sum(d.score >= threshold for d in found) for name, found in raw_photos.items()
        }
        result[f"t={threshold}"] = {
            "recall": f"{tp}/{people} = {tp / people:.2f}",
            "false_persons_on_frames": f"{fp} in {len(frames)} frames",
            "person_photos_found": [n for n in PERSON_PHOTOS if on_photos.get(n)],
            "non_person_photos_with_a_person": sorted(
                n for n, count in on_photos.items() if count and n not in PERSON_PHOTOS
            ),
        }
    frame = next(iter(frames.values()))
    for _ in range(5):
        detector.detect(frame)
    stages: dict[str, list[float]] = {}
    total = []
    for _ in range(40):
        t0 = time.perf_counter()
        detector.detect(frame)
        total.append((time.perf_counter() - t0) * 1e3)
        for key, value in detector.last_timings.items():
            stages.setdefault(key, []).append(value)
    result["latency_ms_768x576"] = {
        "threads": threads,
        "total_median": round(statistics.median(total), 1),
        **{k: round(statistics.median(v), 2) for k, v in stages.items()},
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,fast")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--thresholds", default="0.3,0.35,0.4,0.45,0.5,0.55,0.6")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    for model in args.models.split(","):
        print(json.dumps(evaluate(model, args.threads, thresholds), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
