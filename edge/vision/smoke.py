"""A classical video smoke cue detector: no model, a few milliseconds per analysed frame.

Smoke seen by a fixed camera is (1) a change against a slowly learned background that is (2) grey:
low saturation, neither black nor blown out, (3) translucent, so it softens the edges of what lies
behind it, and (4) drifting upward, slowly. Each cue alone fires on many things (a grey coat, a
cloud shadow, a swaying tree); together, and held for `confirm_s` in the same blocks of the image,
they rarely do. The frame is scaled to `smoke.width` pixels and split into 8x8-pixel blocks; a
block accumulates evidence while all cues hold in it and loses it twice as slowly when they do
not. Smoke is reported when the blocks that held their evidence for `confirm_s` cover `min_area`
of the frame.

Limits (docs/vision.md): tuned on a synthetic plume over real footage only; thin smoke against a
featureless or white background shows no softening and no colour change and is missed; steam, fog,
dust and grey cloth that drift upward could fire it. It is a cue that asks a person to look, not a
certified fire detector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import cv2
import numpy as np

from edge.vision.config import SmokeSettings
from edge.vision.regions import Box, Regions

BLOCK = 8
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclasses.dataclass(frozen=True, slots=True)
class SmokeCue:
    area: float  # fraction of the (unmasked) frame covered by confirmed blocks
    box: Box  # around the confirmed blocks, in pixels of the full frame
    score: float  # 0..1: how firmly the confirmed blocks hold their evidence


class SmokeDetector:
    # thresholds on the 0..255 scales of an 8-bit HSV image
    MIN_CHANGE = 5.0  # grey levels against the background
    MAX_SATURATION = 110
    MIN_VALUE, MAX_VALUE = 50, 245
    SOFTENING = 0.9  # contrast (std) against the background's, below which a block is veiled
    MIN_CONTRAST = 3.0  # background blocks with a lower std (grey levels) are flat
    MIN_CORRELATION = 0.5  # of a veiled block with the background behind it
    MIN_RISE = 0.002  # upward drift of a block, frame widths per second (smoothed)
    MAX_SPEED = 0.025  # faster (frame widths per second) is not slow drift: a walker, a car
    MIN_CUE_PIXELS = 0.3  # fraction of a block's pixels that must pass the pixel cues
    DRIFT_S = 2.0  # time constant of the per-block flow average
    MIN_CHURN = 0.5  # mean grey-level change of a block between analysed frames, and
    CHURN_OVER_NOISE = 2.0  # at least this many times the frame's median (sensor noise)
    WARMUP_S = 3.0  # learn the background before looking for smoke
    WARMUP_RATE = 0.3  # background learning rates per analysed frame
    STILL_RATE = 0.08
    MOVING_RATE = 0.02
    STILL = 2.0  # grey levels between analysed frames: below, a pixel holds still

    def __init__(self, settings: SmokeSettings, regions: Regions | None = None) -> None:
        self.settings = settings
        self.regions = regions or Regions()
        self._size: tuple[int, int] | None = None
        self._bg: np.ndarray | None = None  # float32 grey background
        self._bg_hsv: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        self._prev_t = 0.0
        self._started_t = 0.0
        self._evidence: np.ndarray | None = None  # per block, 0..1
        self._vy: np.ndarray | None = None  # per block, smoothed vertical flow (px/s)
        self._frames = 0
        self.last_positive_blocks = 0
        self.last_cues: dict[str, int] = {}  # blocks passing each cue in turn (diagnostics)

    def update(
        self, frame_bgr: np.ndarray, t: float, exclude: Iterable[Box] = ()
    ) -> SmokeCue | None:
        """Feed one frame at time `t` (s); returns the current smoke cue, if confirmed.

        `exclude`: boxes (frame pixels) known to hold something else, e.g. tracked people.
        """
        h, w = frame_bgr.shape[:2]
        sw = min(self.settings.width, w) // BLOCK * BLOCK
        sh = max(BLOCK, round(h * sw / w) // BLOCK * BLOCK)
        small = cv2.resize(frame_bgr, (sw, sh), interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (3, 3), 0)
        grey = grey.astype(np.float32)
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        if self._size != (w, h) or self._bg is None:
            self._reset((w, h), grey, hsv, t)
            return None
        dt = max(1e-3, t - self._prev_t)
        self._frames += 1

        if t - self._started_t < self.WARMUP_S:
            self._learn(grey, hsv, None)
            self._prev, self._prev_t = grey, t
            return None
        # smoke is one region that flickers inside: a block next to a positive one counts
        positive = cv2.dilate(
            self._positive_blocks(grey, hsv, dt, sw, sh).astype(np.uint8), _CROSS
        ).astype(bool)
        for x1, y1, x2, y2 in exclude:
            c1, r1 = int(x1 * sw / w) // BLOCK, int(y1 * sh / h) // BLOCK
            c2, r2 = int(np.ceil(x2 * sw / w / BLOCK)), int(np.ceil(y2 * sh / h / BLOCK))
            positive[max(0, r1) : max(0, r2), max(0, c1) : max(0, c2)] = False
        self.last_positive_blocks = int(positive.sum())
        gain = dt / self.settings.confirm_s
        assert self._evidence is not None
        self._evidence = np.where(
            positive,
            np.minimum(1.0, self._evidence + gain),
            np.maximum(0.0, self._evidence - gain),
        )
        self._learn(grey, hsv, positive)
        self._prev, self._prev_t = grey, t
        return self._cue(w, h, sw, sh)

    # ---------------------------------------------------------------------------------------
    def _reset(self, size: tuple[int, int], grey: np.ndarray, hsv: np.ndarray, t: float) -> None:
        self._size = size
        self._bg = grey.copy()
        self._bg_hsv = hsv.astype(np.float32)
        self._prev, self._prev_t = grey, t
        self._started_t = t
        bh, bw = grey.shape[0] // BLOCK, grey.shape[1] // BLOCK
        self._evidence = np.zeros((bh, bw), np.float32)
        self._vy = np.zeros((bh, bw), np.float32)
        allowed = self.regions.allowed_mask(grey.shape[1], grey.shape[0])
        self._allowed_blocks = (
            np.ones((bh, bw), bool) if allowed is None else _block_mean(allowed / 255.0) > 0.5
        )
        self._frames = 0

    def _positive_blocks(
        self, grey: np.ndarray, hsv: np.ndarray, dt: float, sw: int, sh: int
    ) -> np.ndarray:
        assert self._bg is not None and self._bg_hsv is not None and self._prev is not None
        # (1) change against the background and (2) grey colour, per pixel
        changed = np.abs(grey - self._bg) >= self.MIN_CHANGE
        sat, val = hsv[..., 1], hsv[..., 2]
        greyish = (
            (sat <= self.MAX_SATURATION)
            & (val >= self.MIN_VALUE)
            & (val <= self.MAX_VALUE)
            & (sat.astype(np.float32) <= self._bg_hsv[..., 1] + 8)
        )
        grey_change = _block_mean((changed & greyish).astype(np.float32)) >= self.MIN_CUE_PIXELS
        # (3) translucent: the background's pattern still shows through, with less contrast
        translucent = self._translucent(grey)
        # (4) alive: smoke churns from frame to frame; a ghost of something gone does not
        churn = _block_mean(np.abs(grey - self._prev))
        churning = churn >= max(self.MIN_CHURN, self.CHURN_OVER_NOISE * float(np.median(churn)))
        # (5) slow upward drift: dense optical flow of the foreground layer (frame minus
        # background: the static scene seen through the smoke would pin the flow to zero)
        # between the last two analysed frames, averaged over about `DRIFT_S` s while the other
        # cues hold (flow on smoke is noisy)
        flow = cv2.calcOpticalFlowFarneback(
            _layer(self._prev, self._bg), _layer(grey, self._bg), None, 0.5, 2, 9, 2, 5, 1.1, 0
        )
        px_per_s = 1.0 / (dt * grey.shape[1])  # flow in frame widths per second
        vy = _block_mean(flow[..., 1]) * px_per_s
        slow = _block_mean(np.hypot(flow[..., 0], flow[..., 1])) * px_per_s <= self.MAX_SPEED
        candidate = grey_change & translucent & churning & slow & self._allowed_blocks
        keep = float(np.exp(-dt / self.DRIFT_S))
        assert self._vy is not None
        self._vy = np.where(
            candidate,
            keep * self._vy + (1 - keep) * vy,
            np.where(grey_change, self._vy, keep * self._vy),  # held while the region stays
        )
        rising = self._vy <= -self.MIN_RISE
        self.last_cues = {
            "grey_change": int(grey_change.sum()),
            "translucent": int((grey_change & translucent).sum()),
            "churning": int((grey_change & translucent & churning).sum()),
            "slow": int(candidate.sum()),
            "rising": int((candidate & rising).sum()),
        }
        return candidate & rising

    def _translucent(self, grey: np.ndarray) -> np.ndarray:
        """Per block: the frame correlates with the background but has less contrast.

        An opaque object (a person) replaces the pattern behind it; smoke only veils it. A flat
        background block has no pattern to veil: there the cue abstains (passes).
        """
        assert self._bg is not None
        bg = self._bg
        mf, mb = _block_mean(grey), _block_mean(bg)
        vf = np.maximum(_block_mean(grey * grey) - mf * mf, 0.0)
        vb = np.maximum(_block_mean(bg * bg) - mb * mb, 0.0)
        cov = _block_mean(grey * bg) - mf * mb
        ncc = cov / np.sqrt(np.maximum(vf * vb, 1e-6))
        flat = vb < self.MIN_CONTRAST**2
        veiled = (ncc >= self.MIN_CORRELATION) & (vf < (self.SOFTENING**2) * vb)
        return flat | veiled

    def _learn(self, grey: np.ndarray, hsv: np.ndarray, positive: np.ndarray | None) -> None:
        """Blend the frame into the background.

        A pixel that holds still between analysed frames is learned fast (`STILL_RATE`): the
        ghost of something that left, or a light switched on, is gone in a few seconds. A pixel
        that keeps changing is learned slowly, and hardly at all inside suspected smoke.
        """
        assert self._bg is not None and self._bg_hsv is not None and self._prev is not None
        if positive is None:
            rates = np.full(grey.shape, self.WARMUP_RATE, np.float32)
        else:
            still = np.abs(grey - self._prev) < self.STILL
            rates = np.where(still, self.STILL_RATE, self.MOVING_RATE).astype(np.float32)
            rates[np.kron(positive, np.ones((BLOCK, BLOCK), bool))] = self.MOVING_RATE / 10
        self._bg += rates * (grey - self._bg)
        self._bg_hsv += rates[..., None] * (hsv.astype(np.float32) - self._bg_hsv)

    def _cue(self, w: int, h: int, sw: int, sh: int) -> SmokeCue | None:
        assert self._evidence is not None
        confirmed = (self._evidence >= 0.999) & self._allowed_blocks
        n_allowed = max(1, int(self._allowed_blocks.sum()))
        area = float(confirmed.sum()) / n_allowed
        if area < self.settings.min_area or area == 0.0:
            return None
        rows, cols = np.nonzero(confirmed)
        sx, sy = w / sw, h / sh
        box = (
            float(cols.min() * BLOCK * sx),
            float(rows.min() * BLOCK * sy),
            float((cols.max() + 1) * BLOCK * sx),
            float((rows.max() + 1) * BLOCK * sy),
        )
        held = self._evidence[self._evidence > 0.0]
        return SmokeCue(area, box, float(held.mean()) if held.size else 0.0)


def _layer(grey: np.ndarray, bg: np.ndarray) -> np.ndarray:
    return np.clip(128.0 + 3.0 * (grey - bg), 0, 255).astype(np.uint8)


def _block_mean(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return image.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(1, 3))
