"""Shared helpers of the model conversion scripts: frames for calibration, provenance records."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

# vtest.avi frames [0, 500) calibrate int8 models; frames [500, 795) are kept for evaluation,
# and the test frames committed under tests/data/ all come from that second range.
CALIBRATION_FRAMES = range(0, 500, 5)


def read_video_frames(path: Path, indices) -> list[np.ndarray]:
    """BGR frames of `path` at `indices` (sorted ascending)."""
    wanted = set(indices)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"{path}: cannot open video")
    frames, index = [], 0
    while wanted:
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted:
            frames.append(frame)
            wanted.discard(index)
        index += 1
    cap.release()
    if wanted:
        raise SystemExit(f"{path}: video ended before frame {min(wanted)}")
    return frames


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions(*dists: str) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in dists:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def write_provenance(out: Path, record: dict) -> None:
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
