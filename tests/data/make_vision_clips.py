"""Make the camera-pipeline test clips from Debian's opencv-doc samples (a dev-time tool).

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocvdoc
    .venv/bin/python tests/data/make_vision_clips.py \
        /tmp/ocvdoc/usr/share/doc/opencv-doc/examples/data

writes, next to this script:
- smoke_synthetic.mp4: SYNTHETIC smoke. A real empty scene (the per-pixel median of vtest.avi,
  which removes the walkers) with procedurally rendered grey plumes rising from a point on the
  lawn, plus sensor noise. 640x360, 10 fps, 30 s; smoke starts at 3 s. It shows that the cue
  detector's logic works end to end; it says nothing about how real smoke looks to it.
- vtest_people.mp4: REAL footage: frames 480-794 of vtest.avi (people walking across a campus),
  scaled to 640x480, 10 fps, 31.5 s. Covers the hand-checked frames 505-780 of
  vtest_person_boxes.json. The camera-pipeline tests and bench/vision.py run on it.
- tree_motion.mp4: REAL footage: tree.avi (a tree swaying in the wind, no people), 320x240,
  15 fps; its 68 decodable frames played forward and backward to 10 s. Motion that must not
  become a person event.

All come from files of Debian 12's opencv-doc 4.6.0 (OpenCV samples/data; Apache-2.0 AND
BSD-3-Clause, see /usr/share/doc/opencv-doc/copyright in that package). Deterministic (seeded).
Encoded as H.264 by Debian's `ffmpeg` (crf 27; the smoke clip crf 25, its faint texture is what
is tested); apt-get install ffmpeg, dev-time only: OpenCV decodes the clips without it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = (640, 360)
FPS = 10
SECONDS = 30
SMOKE_FROM_S = 3.0
SMOKE_CRF = 25


class Writer:
    """Frames piped into ffmpeg's x264: a tenth of the size OpenCV's MPEG-4 writer gives."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], crf: int = 27) -> None:
        w, h = size
        self.proc = subprocess.Popen(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24"]
            + ["-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "slow"]
            + ["-crf", str(crf), "-pix_fmt", "yuv420p", "-g", str(round(fps) * 2), str(path)],
            stdin=subprocess.PIPE,
        )

    def write(self, frame: np.ndarray) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(np.ascontiguousarray(frame).tobytes())

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise RuntimeError("ffmpeg failed")


def median_background(vtest: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(vtest))
    frames = []
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index % 8 == 0:
            frames.append(frame)
        index += 1
    cap.release()
    bg = np.median(np.stack(frames), axis=0).astype(np.uint8)  # 768x576
    crop = bg[100:532]  # 16:9 band with lawn, road and buildings
    return cv2.resize(crop, SIZE, interpolation=cv2.INTER_AREA)


def value_noise(rng: np.random.Generator, h: int, w: int, octaves: int = 4) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 4 * 2**o
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    return (out - out.min()) / (out.max() - out.min() + 1e-6)


def render_smoke(background: np.ndarray, out: Path, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    w, h = SIZE
    gw, gh = w // 4, h // 4  # density is smooth: render at 1/4 and upscale
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32)
    noise = value_noise(rng, gh * 3, gw, octaves=6)  # tall: scrolled upward over time
    noise2 = value_noise(rng, gh * 3, gw, octaves=6)
    source = np.array([0.42 * gw, 0.80 * gh], np.float32)
    particles: list[list[float]] = []  # x, y, vx, vy, born
    writer = Writer(out, FPS, SIZE, crf=SMOKE_CRF)
    smoke_colour = np.array([208, 206, 204], np.float32)
    bg = background.astype(np.float32)
    for i in range(FPS * SECONDS):
        t = i / FPS
        if t >= SMOKE_FROM_S:
            rate = min(1.0, (t - SMOKE_FROM_S) / 3.0) * 10  # particles per frame, ramping up
            for _ in range(rng.poisson(rate)):
                particles.append(
                    [
                        source[0] + rng.normal(0, 1.0),
                        source[1] + rng.normal(0, 0.5),
                        rng.normal(0.5, 0.5),  # wind: a slight drift to the right
                        -rng.uniform(4.0, 6.5),  # upward, slowly (grid px per second)
                        t,
                        rng.uniform(0.5, 2.5),  # sway amplitude
                    ]
                )
        density = np.zeros((gh, gw), np.float32)
        alive = []
        for p in particles:
            age = t - p[4]
            if age > 10.0:
                continue
            alive.append(p)
            x = p[0] + p[2] * age + p[5] * np.sin(0.7 * age + 3 * p[4])
            y = p[1] + p[3] * age
            radius = 1.2 + 0.6 * age
            strength = 0.4 * np.exp(-age / 5.0)
            density += strength * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * radius**2))
        particles = alive
        texture = 0.5 * (_scrolled(noise, gh, t * 7.0) + _scrolled(noise2, gh, t * 4.0))
        texture = (texture - texture.min()) / (texture.max() - texture.min() + 1e-6)
        alpha = 0.85 * np.clip(density * 1.6, 0.0, 1.0) * (0.25 + 0.75 * texture**2)
        alpha = cv2.resize(alpha, SIZE, interpolation=cv2.INTER_CUBIC)[..., None]
        alpha = np.clip(alpha, 0.0, 0.8)
        shade = cv2.resize(texture, SIZE, interpolation=cv2.INTER_CUBIC)[..., None]
        colour = smoke_colour * (0.9 + 0.15 * shade)
        frame = (1.0 - alpha) * bg + alpha * colour
        frame += rng.normal(0, 1.5, frame.shape).astype(np.float32)  # sensor noise
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()


def _scrolled(noise: np.ndarray, rows: int, shift: float) -> np.ndarray:
    """A window of `rows` rows sliding down a tall noise field: its content moves up."""
    top = int(shift) % (noise.shape[0] - rows)
    return noise[top : top + rows]


def cut_tree(tree: Path, out: Path, seconds: float = 10.0) -> None:
    """tree.avi decodes to 68 frames (4.5 s): played forward, backward, forward... to `seconds`."""
    cap = cv2.VideoCapture(str(tree))
    fps = cap.get(cv2.CAP_PROP_FPS) or 15.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    h, w = frames[0].shape[:2]
    writer = Writer(out, round(fps), (w, h))
    order = frames + frames[-2:0:-1]
    for i in range(int(seconds * fps)):
        writer.write(order[i % len(order)])
    writer.release()


def cut_people(vtest: Path, out: Path, first: int = 480) -> None:
    cap = cv2.VideoCapture(str(vtest))
    writer = Writer(out, FPS, (640, 480))
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index >= first:
            writer.write(cv2.resize(frame, (640, 480), interpolation=cv2.INTER_AREA))
        index += 1
    writer.release()
    cap.release()


def main(data: Path) -> None:
    render_smoke(median_background(data / "vtest.avi"), HERE / "smoke_synthetic.mp4")
    cut_tree(data / "tree.avi", HERE / "tree_motion.mp4")
    cut_people(data / "vtest.avi", HERE / "vtest_people.mp4")
    for name in ("smoke_synthetic.mp4", "tree_motion.mp4", "vtest_people.mp4"):
        print(name, (HERE / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
