"""Event snapshots: a JPEG small enough for a constrained uplink (40 KB by default).

The frame is first scaled to `max_width`, then the JPEG quality is lowered step by step, then the
frame is scaled down further, until the file fits. Boxes are drawn so that an operator sees at once
what the gateway saw.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from edge.vision.config import SnapshotSettings
from edge.vision.regions import Box

_QUALITY_STEP = 10
_MIN_QUALITY = 35
_SCALE_STEP = 0.75


class SnapshotTooLarge(ValueError):
    pass


def encode_snapshot(
    frame_bgr: np.ndarray,
    settings: SnapshotSettings,
    boxes: Iterable[Box] = (),
    colour: tuple[int, int, int] = (0, 0, 255),
) -> bytes:
    h, w = frame_bgr.shape[:2]
    scale = min(1.0, settings.max_width / w)
    image = frame_bgr
    boxes = list(boxes)
    if settings.draw_boxes and boxes:
        image = frame_bgr.copy()
        thickness = max(1, round(2 / scale))
        for x1, y1, x2, y2 in boxes:
            p1, p2 = (round(x1), round(y1)), (round(x2), round(y2))
            cv2.rectangle(image, p1, p2, colour, thickness)
    while True:
        sw, sh = max(16, round(w * scale)), max(16, round(h * scale))
        small = image if (sw, sh) == (w, h) else cv2.resize(image, (sw, sh), cv2.INTER_AREA)
        quality = settings.quality
        while quality >= _MIN_QUALITY:
            ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise SnapshotTooLarge("JPEG encoding failed")
            if buf.size <= settings.max_bytes:
                return buf.tobytes()
            quality -= _QUALITY_STEP
        if sw <= 64:
            raise SnapshotTooLarge(f"cannot fit a snapshot into {settings.max_bytes} bytes")
        scale *= _SCALE_STEP
