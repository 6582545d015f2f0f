"""`wardgate detect`: run a detector on images and video files.

Cheap to import: OpenCV, numpy and the TFLite runtime load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 1
EXIT_BAD_MODEL = 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="detect persons (or smoke) in images and video files",
        description=(
            "Run a detector on images and video files. With --json, prints one JSON object per "
            'line per image (per analysed frame for a video): {"source": PATH, "frame": N, '
            '"detections": [{"label": "person", "score": S, "box": [x1, y1, x2, y2]}]}, boxes '
            "in pixels of the input, at the model's documented default threshold "
            "(docs/models.md) unless --threshold is given."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image or video file")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout")
    p.add_argument(
        "--model",
        default="default",
        metavar="NAME",
        help="'default', 'fast', 'smoke', a model file stem in edge/models, or a .tflite path",
    )
    p.add_argument(
        "--family",
        metavar="NAME",
        help="model family (nanodet, ssd, smoke-classifier) of a model without metadata",
    )
    p.add_argument("--threshold", type=float, metavar="T", help="minimum score (0..1)")
    p.add_argument("--threads", type=int, default=1, help="TFLite (XNNPACK) threads")
    p.add_argument(
        "--every", type=int, default=1, metavar="N", help="analyse every Nth frame of a video"
    )
    p.set_defaults(func=detect_command)


def _error(message: str) -> None:
    print(f"wardgate detect: {message}", file=sys.stderr)


def _open_detector(args):
    """The model's declared family picks the code: a person detector or a classifier.

    A model without metadata needs `--family`; one exception keeps the command's contract for
    `train-smoke` models copied without their `.json`: a file with one image in and one score out
    is run as the smoke classifier (that shape is all a classifier has to declare)."""
    from edge.plugins import import_target
    from edge.vision.families import FamilyUnknown, ModelError, family, resolve
    from edge.vision.smoke_classifier import SmokeClassifier

    options = {"threads": args.threads, "threshold": args.threshold}
    info = resolve(args.model, args.family)
    if info.family is not None and family(info.family).kind == "classifier":
        return import_target(family(info.family).impl)(args.model, **options)
    from edge.vision.detector import PersonDetector

    try:
        return PersonDetector(args.model, family=args.family, **options)
    except FamilyUnknown as unknown:
        try:
            return SmokeClassifier(args.model, **options)
        except ModelError:
            raise unknown from None


def _frames(path: Path, every: int):
    """(frame number, BGR frame) of an image, or of every `every`th frame of a video."""
    import cv2

    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; give image or video files")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is not None:
        yield 0, image
        return
    capture = cv2.VideoCapture(str(path))
    try:
        index = 0
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            raise ValueError(f"{path}: not an image or video that OpenCV can read")
        while ok:
            if index % every == 0:
                yield index, frame
            index += 1
            ok, frame = capture.read()
    finally:
        capture.release()


def detect_command(args) -> int:
    from edge.vision.detector import ModelError

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        _error(f"--threshold {args.threshold}: must be between 0 and 1")
        return EXIT_BAD_INPUT
    if args.every < 1:
        _error(f"--every {args.every}: must be 1 or more")
        return EXIT_BAD_INPUT
    try:
        detector = _open_detector(args)
    except ModelError as exc:
        _error(str(exc))
        return EXIT_BAD_MODEL
    failed = 0
    for raw in args.paths:
        try:
            for frame_no, frame in _frames(Path(raw), args.every):
                found = detector.detect(frame)
                if args.json:
                    record = {
                        "source": raw,
                        "frame": frame_no,
                        "detections": [d.to_json() for d in found],
                    }
                    print(json.dumps(record), flush=True)
                else:
                    shown = ", ".join(
                        f"{d.label} {d.score:.2f} [{', '.join(f'{v:.0f}' for v in d.box)}]"
                        for d in found
                    )
                    print(f"{raw} frame {frame_no}: {shown or 'nothing'}", flush=True)
        except ValueError as exc:
            _error(str(exc))
            failed += 1
    return EXIT_BAD_INPUT if failed else 0
