"""A light IoU/centroid tracker that turns per-frame person boxes into a few meaningful events.

Per track: `start` once it was seen in `confirm_frames` detector runs (a single false box never
raises an event), `update` at most every `update_every_s`, `entered`/`left` when its foot point
crosses a zone border, `end` (duration, best score) once it was unseen for `end_after_s`. A track
that flickers out for a few frames keeps its identity, so a person standing half-hidden is one
event, not a storm of them. New-person events are rate-limited per camera by a token bucket
(`burst` back to back, then one per `cooldown_s`): a start over the limit waits for a token, and
a track that ends before it got one is only counted (`suppressed`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from edge.vision.config import PersonSettings
from edge.vision.regions import Box

EventKind = Literal["start", "update", "entered", "left", "end"]
ZonesOf = Callable[[Box], frozenset[str]]


@dataclasses.dataclass
class Track:
    id: int
    box: Box
    score: float
    first_t: float
    last_t: float
    hits: int = 1
    misses: int = 0  # detector runs in a row without this track
    best_score: float = 0.0
    best_box: Box = (0.0, 0.0, 0.0, 0.0)
    velocity: tuple[float, float] = (0.0, 0.0)  # px/s of the box centre
    confirmed: bool = False
    reported: bool = False  # its start event went out (not rate-limited)
    zones: frozenset[str] = frozenset()
    last_event_t: float = 0.0
    ref: bytes | None = None  # id of its start event, set by the pipeline

    @property
    def duration(self) -> float:
        return self.last_t - self.first_t

    def predicted(self, t: float) -> Box:
        dt = min(t - self.last_t, 2.0)
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        x1, y1, x2, y2 = self.box
        return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)


@dataclasses.dataclass(frozen=True, slots=True)
class TrackEvent:
    kind: EventKind
    track: Track
    zone: str | None = None


class TokenBucket:
    def __init__(self, burst: int, refill_s: float) -> None:
        self.capacity = float(burst)
        self.refill_s = refill_s
        self.tokens = float(burst)
        self._t: float | None = None

    def take(self, t: float) -> bool:
        if self.refill_s <= 0:
            return True
        if self._t is not None:
            self.tokens = min(self.capacity, self.tokens + (t - self._t) / self.refill_s)
        self._t = t
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    if inter <= 0:
        return 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0


class Tracker:
    def __init__(self, settings: PersonSettings, zones_of: ZonesOf | None = None) -> None:
        self.settings = settings
        self.zones_of: ZonesOf = zones_of or (lambda _box: frozenset())
        self.tracks: list[Track] = []
        self.bucket = TokenBucket(settings.burst, settings.cooldown_s)
        self.suppressed = 0
        self.started = 0
        self._next_id = 1

    @property
    def active(self) -> bool:
        return bool(self.tracks)

    def update(self, t: float, detections: Iterable[tuple[Box, float]]) -> list[TrackEvent]:
        """Feed one detector run (boxes with scores) at time `t`; returns the events it caused."""
        dets = list(detections)
        matches = self._match(t, [b for b, _ in dets])
        events: list[TrackEvent] = []
        seen: set[int] = set()
        for ti, di in matches:
            track = self.tracks[ti]
            box, score = dets[di]
            self._observe(track, box, score, t)
            seen.add(ti)
            events += self._progress(track, t)
        for ti, track in enumerate(self.tracks):
            if ti not in seen:
                track.misses += 1
        matched = {di for _, di in matches}
        for di, (box, score) in enumerate(dets):
            if di not in matched:
                track = Track(self._next_id, box, score, t, t, best_score=score, best_box=box)
                self._next_id += 1
                self.tracks.append(track)
                events += self._progress(track, t)
        return events + self._expire(t)

    def flush(self, t: float) -> list[TrackEvent]:
        """End every track (end of a file, shutdown)."""
        events = [TrackEvent("end", tr) for tr in self.tracks if tr.reported]
        self.tracks.clear()
        return events

    # ---------------------------------------------------------------------------------------
    def _match(self, t: float, boxes: Sequence[Box]) -> list[tuple[int, int]]:
        """Greedy: best IoU pairs first, then nearest centres for what IoU could not pair."""
        pairs = []
        for ti, track in enumerate(self.tracks):
            pred = track.predicted(t)
            for di, box in enumerate(boxes):
                overlap = iou(pred, box)
                if overlap >= self.settings.iou_match:
                    pairs.append((overlap, ti, di))
        pairs.sort(reverse=True)
        used_t: set[int] = set()
        used_d: set[int] = set()
        out: list[tuple[int, int]] = []
        for _, ti, di in pairs:
            if ti not in used_t and di not in used_d:
                used_t.add(ti)
                used_d.add(di)
                out.append((ti, di))
        near = []
        for ti, track in enumerate(self.tracks):
            if ti in used_t:
                continue
            pred = track.predicted(t)
            cx, cy = _centre(pred)
            size = max(pred[2] - pred[0], pred[3] - pred[1])
            for di, box in enumerate(boxes):
                if di in used_d:
                    continue
                bx, by = _centre(box)
                dist = ((bx - cx) ** 2 + (by - cy) ** 2) ** 0.5
                bsize = max(box[2] - box[0], box[3] - box[1])
                gate = size * (0.5 + min(t - track.last_t, 1.0))  # further, the longer unseen
                if dist < gate and 0.5 < bsize / max(size, 1e-6) < 2.0:
                    near.append((dist, ti, di))
        near.sort()
        for _, ti, di in near:
            if ti not in used_t and di not in used_d:
                used_t.add(ti)
                used_d.add(di)
                out.append((ti, di))
        return out

    @staticmethod
    def _observe(track: Track, box: Box, score: float, t: float) -> None:
        dt = t - track.last_t
        if dt > 0:
            (ox, oy), (nx, ny) = _centre(track.box), _centre(box)
            vx, vy = (nx - ox) / dt, (ny - oy) / dt
            track.velocity = (
                0.5 * track.velocity[0] + 0.5 * vx,
                0.5 * track.velocity[1] + 0.5 * vy,
            )
        track.box, track.score, track.last_t = box, score, t
        track.hits += 1
        track.misses = 0
        if score > track.best_score:
            track.best_score, track.best_box = score, box

    def _progress(self, track: Track, t: float) -> list[TrackEvent]:
        s = self.settings
        if not track.confirmed:
            if track.hits < s.confirm_frames:
                return []
            track.confirmed = True
        if not track.reported:  # confirmed, waiting for a token of the start rate limit
            if not self.bucket.take(t):
                return []
            track.reported = True
            track.zones = self.zones_of(track.box)
            track.last_event_t = t
            self.started += 1
            return [TrackEvent("start", track)]
        events: list[TrackEvent] = []
        zones = self.zones_of(track.box)
        if zones != track.zones:
            events += [TrackEvent("entered", track, z) for z in sorted(zones - track.zones)]
            events += [TrackEvent("left", track, z) for z in sorted(track.zones - zones)]
            track.zones = zones
        if t - track.last_event_t >= s.update_every_s:
            events.append(TrackEvent("update", track))
        if events:
            track.last_event_t = t
        return events

    def _expire(self, t: float) -> list[TrackEvent]:
        s = self.settings
        keep: list[Track] = []
        events: list[TrackEvent] = []
        for track in self.tracks:
            gone = t - track.last_t
            if track.confirmed:
                if gone < s.end_after_s:
                    keep.append(track)
                elif track.reported:
                    events.append(TrackEvent("end", track))
                else:
                    self.suppressed += 1  # gone before the rate limit let its start out
            # an unconfirmed track must keep showing up: two misses in a row and it is dropped
            elif track.misses < 2 and gone < s.end_after_s:
                keep.append(track)
        self.tracks = keep
        return events
