"""Masks and zones of one camera, turned from config fractions into pixels for a frame size.

A box is placed by its foot point (bottom centre): a person standing in a zone has their feet in
it, whatever their head overlaps. The same rule decides whether a detection lies in a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

Box = tuple[float, float, float, float]
PolygonFractions = Sequence[Sequence[float]]


def foot_point(box: Box) -> tuple[float, float]:
    x1, _, x2, y2 = box
    return (x1 + x2) / 2.0, y2


class Regions:
    def __init__(
        self,
        masks: Sequence[PolygonFractions] = (),
        zones: Sequence[tuple[str, PolygonFractions]] = (),
    ) -> None:
        self._masks = [np.asarray(p, dtype=np.float32) for p in masks]
        self._zones = [(name, np.asarray(p, dtype=np.float32)) for name, p in zones]

    @property
    def has_masks(self) -> bool:
        return bool(self._masks)

    @property
    def zone_names(self) -> list[str]:
        return [name for name, _ in self._zones]

    def allowed_mask(self, width: int, height: int) -> np.ndarray | None:
        """uint8 image, 255 where motion counts, 0 under masks; None when nothing is masked."""
        if not self._masks:
            return None
        return _allowed_mask(width, height, tuple(map(_freeze, self._masks)))

    def masked(self, box: Box, width: int, height: int) -> bool:
        x, y = foot_point(box)
        return any(_inside(p, x / width, y / height) for p in self._masks)

    def zones_of(self, box: Box, width: int, height: int) -> frozenset[str]:
        x, y = foot_point(box)
        return frozenset(n for n, p in self._zones if _inside(p, x / width, y / height))


def _freeze(poly: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in poly)


def _inside(poly: np.ndarray, x: float, y: float) -> bool:
    return cv2.pointPolygonTest(poly.reshape(-1, 1, 2), (x, y), False) >= 0


@lru_cache(maxsize=32)
def _allowed_mask(
    width: int, height: int, polys: tuple[tuple[tuple[float, float], ...], ...]
) -> np.ndarray:
    out = np.full((height, width), 255, np.uint8)
    scale = np.array([width, height], np.float32)
    pts = [np.round(np.asarray(p, np.float32) * scale).astype(np.int32) for p in polys]
    cv2.fillPoly(out, pts, 0)
    out.setflags(write=False)
    return out
