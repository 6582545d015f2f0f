"""Make a SYNTHETIC smoke data set (class folders smoke/ and none/) for `wardgate train-smoke`.

No redistributable smoke footage or smoke model exists in the package registries, so the default
smoke model is trained on this: real backgrounds (vtest.avi frames 0-499, never the test frames;
tree.avi and still photos from Debian's opencv-doc samples) with procedurally rendered smoke
(translucent grey, soft-edged, textured plumes that blur what lies behind them). A model trained
on it learns what this renderer draws. It is a placeholder that proves the slot end to end, not
a fire-safety component: train on real smoke (e.g. D-Fire) before relying on it.

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocvdoc
    python tools/models/make_synthetic_smoke.py \
        /tmp/ocvdoc/usr/share/doc/opencv-doc/examples/data /tmp/smoke-dataset
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SIZE = 96
STILLS = (
    "aero1.jpg",
    "aero3.jpg",
    "building.jpg",
    "home.jpg",
    "fruits.jpg",
    "baboon.jpg",
    "leuvenA.jpg",
    "leuvenB.jpg",
    "board.jpg",
    "stuff.jpg",
    "squirrel_cls.jpg",
    "orange.jpg",
    "apple.jpg",
    "starry_night.jpg",
    "graf1.png",
    "basketball1.png",
    "aloeL.jpg",
    "pic1.png",
)

# Not astronaut, chelsea, coffee, rocket: those are test photos (tests/data/photos).
SKIMAGE_STILLS = (
    "brick.png",
    "grass.png",
    "gravel.png",
    "camera.png",
    "motorcycle_left.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "color.png",
    "retina.jpg",
    "logo.png",
)


def backgrounds(data: Path) -> list[np.ndarray]:
    images = common.read_video_frames(data / "vtest.avi", common.CALIBRATION_FRAMES)
    images += common.read_video_frames(data / "tree.avi", range(0, 60, 4))
    for name in STILLS:
        image = cv2.imread(str(data / name), cv2.IMREAD_COLOR)
        if image is not None:
            images.append(image)
    return images


def random_crop(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = int(rng.uniform(0.25, 1.0) * min(h, w))
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    return cv2.resize(image[y : y + side, x : x + side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def value_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    amp = total = 0.0
    amp = 1.0
    for octave in range(octaves):
        cells = 2 * 2**octave
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.55
    out /= total
    return (out - out.min()) / (out.max() - out.min() + 1e-6)


def smoke_alpha(rng: np.random.Generator) -> np.ndarray:
    """Soft, textured plume density in 0..1 rising from a source, widening as it goes up."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    density = np.zeros((SIZE, SIZE), np.float32)
    x0 = rng.uniform(0.2, 0.8)
    y0 = rng.uniform(0.6, 1.0)
    drift = rng.normal(0, 0.3)
    for _ in range(int(rng.integers(6, 16))):
        t = rng.uniform(0, 1)
        cy = y0 - t * rng.uniform(0.6, 1.1)
        cx = x0 + drift * t + rng.normal(0, 0.04)
        r = 0.06 + 0.25 * t * rng.uniform(0.6, 1.4)
        density += np.exp(-((xs - cx) ** 2 + ((ys - cy) * 0.8) ** 2) / (2 * r * r))
    density /= density.max() + 1e-6
    texture = value_noise(rng, SIZE, octaves=5)
    return np.clip(1.3 * density * (0.45 + 0.8 * texture), 0, 1)


def add_smoke(rng: np.random.Generator, tile: np.ndarray) -> np.ndarray:
    alpha = smoke_alpha(rng) * rng.uniform(0.5, 0.9)
    grey = rng.uniform(150, 235) if rng.random() < 0.8 else rng.uniform(80, 140)
    tint = rng.normal(0, 4, 3)
    colour = np.clip(grey + tint, 0, 255).astype(np.float32)
    shade = value_noise(rng, SIZE, octaves=3)[..., None]
    smoke = colour * (0.85 + 0.3 * shade)
    base = tile.astype(np.float32)
    blurred = cv2.GaussianBlur(base, (0, 0), rng.uniform(1.5, 4.0))  # smoke softens edges
    a = alpha[..., None]
    behind = base * (1 - a) + blurred * a
    out = behind * (1 - a) + smoke * a
    out += rng.normal(0, 2.0, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def hard_negative(rng: np.random.Generator, tile: np.ndarray) -> np.ndarray:
    """Mostly plain crops; some blurred or evenly hazed, so blur or greyness alone is not smoke."""
    roll = rng.random()
    if roll < 0.65:
        return tile
    if roll < 0.85:
        return cv2.GaussianBlur(tile, (0, 0), rng.uniform(1.5, 4.0))
    grey = np.full_like(tile, int(rng.uniform(120, 230)))
    return cv2.addWeighted(tile, 1.0 - (a := rng.uniform(0.15, 0.4)), grey, a, 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("opencv_data", type=Path, help="opencv-doc examples/data directory")
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument(
        "--skimage-data", type=Path, help="skimage/data of a scikit-image wheel: more backgrounds"
    )
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    images = backgrounds(args.opencv_data)
    if args.skimage_data:
        for name in SKIMAGE_STILLS:
            image = cv2.imread(str(args.skimage_data / name), cv2.IMREAD_COLOR)
            if image is not None:
                images.append(image)
    for name in ("smoke", "none"):
        (args.out / name).mkdir(parents=True, exist_ok=True)
    for i in range(args.per_class):
        tile = random_crop(rng, images[int(rng.integers(len(images)))])
        cv2.imwrite(str(args.out / "smoke" / f"{i:05d}.png"), add_smoke(rng, tile))
        tile = random_crop(rng, images[int(rng.integers(len(images)))])
        cv2.imwrite(str(args.out / "none" / f"{i:05d}.png"), hard_negative(rng, tile))
    print(f"wrote {args.per_class} smoke and {args.per_class} none tiles to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
