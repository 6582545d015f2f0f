"""The motion gate: decides, for well under a millisecond, whether a frame is worth a detector run.

OpenCV's MOG2 background subtractor runs on a blurred grey copy of the frame scaled down to
`motion.width` pixels (160 by default, 1/16 of the pixels of 640x360). Pixels under masks never
count. The detector then runs when enough of the frame changed, while tracks are alive, and at
least every `check_every_s` (a person who walked in while the gate was warming up, or stands
still, is still found).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from edge.vision.config import MotionSettings
from edge.vision.regions import Box, Regions


@dataclasses.dataclass(frozen=True, slots=True)
class Motion:
    active: bool
    fraction: float  # of the unmasked frame that changed
    boxes: tuple[Box, ...] = ()  # changed regions, in pixels of the full frame


class MotionGate:
    def __init__(self, settings: MotionSettings, regions: Regions | None = None) -> None:
        self.settings = settings
        self.regions = regions or Regions()
        self._subtractor = cv2.createBackgroundSubtractorMOG2(
            history=300, varThreshold=float(settings.threshold), detectShadows=False
        )
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._frames = 0
        self._size: tuple[int, int] | None = None

    def update(self, frame_bgr: np.ndarray) -> Motion:
        h, w = frame_bgr.shape[:2]
        sw = min(self.settings.width, w)
        sh = max(1, round(h * sw / w))
        if self._size != (w, h):  # a new stream resolution: learn the background again
            self._size = (w, h)
            self._frames = 0
            self._subtractor.clear()
        small = cv2.resize(frame_bgr, (sw, sh), interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (5, 5), 0)
        learning = -1.0 if self._frames >= self.settings.warmup_frames else 0.2
        fg = self._subtractor.apply(grey, learningRate=learning)
        self._frames += 1
        allowed = self.regions.allowed_mask(sw, sh)
        if allowed is not None:
            fg = cv2.bitwise_and(fg, allowed)
            area = max(1, cv2.countNonZero(allowed))
        else:
            area = sw * sh
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, self._kernel)
        changed = cv2.countNonZero(fg)
        fraction = changed / area
        if self._frames <= self.settings.warmup_frames:
            return Motion(False, fraction)
        active = fraction >= self.settings.min_area
        boxes: tuple[Box, ...] = ()
        if active:
            boxes = self._boxes(fg, w / sw, h / sh)
        return Motion(active, fraction, boxes)

    @staticmethod
    def _boxes(fg: np.ndarray, sx: float, sy: float, limit: int = 16) -> tuple[Box, ...]:
        n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        comps = sorted(stats[1:n], key=lambda s: -int(s[cv2.CC_STAT_AREA]))[:limit]
        return tuple(
            (float(x * sx), float(y * sy), float((x + bw) * sx), float((y + bh) * sy))
            for x, y, bw, bh, _ in comps
        )
