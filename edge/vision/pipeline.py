"""One pipeline per camera: source -> motion gate -> person detector -> tracker -> events.

Everything a camera reports goes through `ctx.emit` from this thread: person events
(`evt/person`, source `cam/<name>`), smoke events (`evt/smoke`) and camera faults (`evt/fault`,
code `camera_offline`, raised when no frame came for `stall_timeout_s` and cleared with
`active: false` when frames return). Snapshots go to `snap/<name>` carrying the id of the event
they belong to (docs/vision.md has the event fields).

Cameras share one detector per model (one TFLite interpreter in memory, used under a lock): on
a Pi the detector is the bottleneck anyway, and the motion gate keeps most frames away from it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from edge.pipeline import Context, NotAccepted, Pipeline
from edge.vision.config import CameraConfig, VisionConfig
from edge.vision.motion import Motion, MotionGate
from edge.vision.regions import Box, Regions
from edge.vision.smoke import SmokeCue, SmokeDetector
from edge.vision.snapshot import SnapshotTooLarge, encode_snapshot
from edge.vision.sources import Frame, FrameSource
from edge.vision.tracker import Tracker, TrackEvent
from protocol import faults

SMOKE_COLOUR = (0, 140, 255)  # orange boxes on smoke snapshots (BGR)


class SharedDetector:
    """A person detector used by several cameras: loaded on first use, one call at a time."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._detector: Any = None
        self._lock = threading.Lock()
        self.last_timings: dict[str, float] = {}

    def detect(self, frame_bgr: np.ndarray) -> list[Any]:
        with self._lock:
            if self._detector is None:
                self._detector = self._factory()
            found = self._detector.detect(frame_bgr)
            self.last_timings = dict(getattr(self._detector, "last_timings", {}))
            return found

    @property
    def threshold(self) -> float | None:
        return getattr(self._detector, "threshold", None)


# weak: a detector lives as long as a camera pipeline uses it, so a reload that changes a
# threshold frees the old interpreter instead of keeping one per threshold ever used
_shared: weakref.WeakValueDictionary[tuple[Any, ...], SharedDetector] = (
    weakref.WeakValueDictionary()
)
_shared_lock = threading.Lock()


def shared_detector(
    model: str,
    threads: int = 1,
    delegate: str | None = None,
    threshold: float | None = None,
    family: str | None = None,
) -> SharedDetector:
    key = (model, threads, delegate, threshold, family)
    with _shared_lock:
        shared = _shared.get(key)
        if shared is None:

            def load() -> Any:
                from edge.vision.detector import PersonDetector

                return PersonDetector(
                    model, threads=threads, threshold=threshold, delegate=delegate, family=family
                )

            shared = _shared[key] = SharedDetector(load)
        return shared


class CameraPipeline(Pipeline):
    def __init__(
        self,
        ctx: Context,
        cam: CameraConfig,
        detector: SharedDetector | None,
        source: FrameSource | None = None,
        min_score: float = 0.0,
    ) -> None:
        super().__init__(f"cam-{cam.name}", ctx)
        self.cam = cam
        self.event_source = f"cam/{cam.name}"
        self.source = source or FrameSource(cam, self.log)
        self.regions = Regions(cam.masks, [(z.name, z.polygon) for z in cam.zones])
        self.gate = MotionGate(cam.motion, self.regions)
        self.detector = detector if cam.person.enabled else None
        self.min_score = cam.person.threshold or min_score
        self.tracker = Tracker(cam.person, lambda box: self.regions.zones_of(box, *self._size))
        self.smoke = SmokeDetector(cam.smoke, self.regions) if cam.smoke.enabled else None
        self.finished = threading.Event()  # a file camera has been played to its end
        self.counters = dict.fromkeys(
            ("frames", "motion", "detector_runs", "person_events", "smoke_events", "snapshots"),
            0,
        )
        self.last_timings: dict[str, float] = {}  # ms per stage of the last processed frame
        self._size = (0, 0)
        self._last_detect_t: float | None = None
        self._moving = False
        self._last_smoke_t: float | None = None
        self._smoke_ref: bytes | None = None
        self._smoke_since = 0.0
        self._smoke_last_cue_t = 0.0
        self._smoke_best = 0.0
        self._smoke_ended_t: float | None = None
        self._suppressed_reported = 0
        self._offline = False
        self._offline_since = 0.0
        self._last_kick = 0.0
        self._last_frame_t: float | None = None
        # for the technician's preview (edge/localweb): references only, nothing is copied or
        # encoded here; the page encodes the newest frame when it asks, at most twice a second
        self.latest_frame: Frame | None = None
        self.last_detections: tuple[float, list[tuple[Box, float]]] = (0.0, [])

    # --- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        if self.counters["frames"]:  # restarted by the supervisor after a failure
            self._restart()
        self.source.start()
        last_seq = 0
        self.set_state("starting", "waiting for the first frame")
        while not stop.is_set():
            frame = self.source.read(last_seq, timeout=0.25)
            with contextlib.suppress(NotAccepted):  # emit() logged it; retried on the next pass
                self._watchdog(frame is not None)
            if frame is None:
                if self.source.finished and not self.finished.is_set():
                    self.end_of_stream()
                continue
            last_seq = frame.seq
            try:
                self.process(frame)
            except NotAccepted as exc:  # camera events are ordinary: skipped, not retried
                self.log.warning("event not accepted: %s", exc)

    def close(self) -> None:
        """Stop the capture; close the person and smoke events still open (the camera is off)."""
        self.source.stop()
        self._close_open_events()

    def process(self, frame: Frame) -> None:
        """Analyse one frame: gate, detect, track, smoke, emit. Public for bench/vision.py."""
        image, t = frame.image, frame.t
        h, w = image.shape[:2]
        self._size = (w, h)
        self._last_frame_t = t
        self.latest_frame = frame
        timings: dict[str, float] = {}
        self.counters["frames"] += 1
        t0 = time.perf_counter()
        motion: Motion | None = None
        if self.cam.motion.enabled:
            motion = self.gate.update(image)
            self.counters["motion"] += motion.active
        t1 = time.perf_counter()
        timings["motion_ms"] = (t1 - t0) * 1e3
        if self.detector is not None and self._detector_due(motion, t):
            self._last_detect_t = t
            found = self.detector.detect(image)
            t2 = time.perf_counter()
            timings["detect_ms"] = (t2 - t1) * 1e3
            self.counters["detector_runs"] += 1
            persons = self._persons(found, w, h)
            self.last_detections = (frame.captured, persons)
            events = self.tracker.update(t, persons)
            t3 = time.perf_counter()
            timings["track_ms"] = (t3 - t2) * 1e3
            self._emit_person(events, image)
            timings["events_ms"] = (time.perf_counter() - t3) * 1e3
        if self.smoke is not None and self._smoke_due(t):
            t4 = time.perf_counter()
            cue = self.smoke.update(image, t, exclude=[tr.box for tr in self.tracker.tracks])
            timings["smoke_ms"] = (time.perf_counter() - t4) * 1e3
            self._smoke_state(cue, image, t)
        self.last_timings = timings

    def _restart(self) -> None:
        """Start the analysis afresh (close() already ended the open events)."""
        self.finished.clear()
        self.gate = MotionGate(self.cam.motion, self.regions)
        if self.smoke is not None:
            self.smoke = SmokeDetector(self.cam.smoke, self.regions)
        self._last_detect_t = self._last_smoke_t = self._last_frame_t = None
        self._smoke_ended_t = None
        self._moving = False

    def end_of_stream(self) -> None:
        """A file without `loop` ended: close open events, then idle until stopped."""
        self._close_open_events()
        self.set_state("ok", "end of file")
        self.finished.set()

    def _close_open_events(self) -> None:
        t = self._last_frame_t or 0.0
        self._emit_person(self.tracker.flush(t), None)
        if self._smoke_ref is not None:
            self._end_smoke(t)

    # --- decisions -------------------------------------------------------------------------
    def _detector_due(self, motion: Motion | None, t: float) -> bool:
        """Run the detector on this frame?

        Always without a gate, on the first frame of new motion, and while a new track is being
        confirmed (so confirmation takes `confirm_frames` frames, not seconds). While motion
        goes on, or people are tracked, every `busy_every_s`: walkers are followed well at
        that rate, and a tree in the wind costs half. In a still scene every `check_every_s`
        (someone standing still, or already there when the gate warmed up).
        """
        if motion is None:
            return True
        was_moving, self._moving = self._moving, motion.active
        since = float("inf") if self._last_detect_t is None else t - self._last_detect_t
        if any(not tr.confirmed for tr in self.tracker.tracks):
            return True
        if motion.active and not was_moving:
            return True
        if motion.active or self.tracker.tracks:
            return since >= self.cam.motion.busy_every_s
        return since >= self.cam.motion.check_every_s

    def _smoke_due(self, t: float) -> bool:
        assert self.smoke is not None
        due = self._last_smoke_t is None or t - self._last_smoke_t >= 0.95 / self.cam.smoke.fps
        if due:
            self._last_smoke_t = t
        return due

    def _persons(self, found: Iterable[Any], w: int, h: int) -> list[tuple[Box, float]]:
        p = self.cam.person
        min_area = p.min_box_area * w * h
        out = []
        for det in found:
            if det.label != "person" or det.score < self.min_score:
                continue
            x1, y1, x2, y2 = det.box
            if (x2 - x1) * (y2 - y1) < min_area or self.regions.masked(det.box, w, h):
                continue
            out.append((tuple(map(float, det.box)), float(det.score)))
        return out  # type: ignore[return-value]

    # --- events ----------------------------------------------------------------------------
    def _emit_person(self, events: list[TrackEvent], image: np.ndarray | None) -> None:
        w, h = self._size
        for ev in events:
            tr = ev.track
            data: dict[str, Any] = {"ev": ev.kind, "trk": tr.id}
            if ev.kind == "start":
                data |= {"score": round(tr.score, 2), "box": _ints(tr.box), "size": [w, h]}
                zones = self.regions.zones_of(tr.box, w, h) if self.regions.zone_names else ()
                if zones:
                    data["zones"] = sorted(zones)
                if self.tracker.suppressed > self._suppressed_reported:
                    data["suppressed"] = self.tracker.suppressed - self._suppressed_reported
                    self._suppressed_reported = self.tracker.suppressed
                jpeg = self._snapshot(image, [tr.box]) if image is not None else None
                if jpeg is not None:
                    data["snap"] = True
                event = self.ctx.emit("person", self.event_source, data)
                tr.ref = event.id
                if jpeg is not None:
                    self._publish(jpeg, event.id)
            else:
                if tr.ref is not None:
                    data["ref"] = tr.ref
                if ev.kind == "update":
                    data |= {"score": round(tr.score, 2), "box": _ints(tr.box)}
                    data["best"] = round(tr.best_score, 2)
                elif ev.kind in ("entered", "left"):
                    data["zone"] = ev.zone
                elif ev.kind == "end":
                    data |= {"dur_s": round(tr.duration, 1), "best": round(tr.best_score, 2)}
                self.ctx.emit("person", self.event_source, data)
            self.counters["person_events"] += 1

    def _smoke_state(self, cue: SmokeCue | None, image: np.ndarray, t: float) -> None:
        s = self.cam.smoke
        if cue is not None:
            self._smoke_last_cue_t = t
            self._smoke_best = max(self._smoke_best, cue.score)
            if self._smoke_ref is None:
                cooled = self._smoke_ended_t is None or t - self._smoke_ended_t >= s.cooldown_s
                if cooled:
                    w, h = self._size
                    data: dict[str, Any] = {
                        "ev": "start",
                        "score": round(cue.score, 2),
                        "area": round(cue.area, 3),
                        "box": _ints(cue.box),
                        "size": [w, h],
                    }
                    jpeg = self._snapshot(image, [cue.box], SMOKE_COLOUR)
                    if jpeg is not None:
                        data["snap"] = True
                    event = self.ctx.emit("smoke", self.event_source, data)
                    self.counters["smoke_events"] += 1
                    self._smoke_ref, self._smoke_since = event.id, t
                    self._smoke_best = cue.score
                    if jpeg is not None:
                        self._publish(jpeg, event.id)
        elif self._smoke_ref is not None and t - self._smoke_last_cue_t >= s.clear_after_s:
            self._end_smoke(t)

    def _end_smoke(self, t: float) -> None:
        data = {
            "ev": "end",
            "ref": self._smoke_ref,
            "dur_s": round(self._smoke_last_cue_t - self._smoke_since, 1),
            "best": round(self._smoke_best, 2),
        }
        self.ctx.emit("smoke", self.event_source, data)
        self.counters["smoke_events"] += 1
        self._smoke_ref = None
        self._smoke_ended_t = t

    def _snapshot(
        self, image: np.ndarray, boxes: list[Box], colour: tuple[int, int, int] = (0, 0, 255)
    ) -> bytes | None:
        if not self.cam.snapshot.enabled:
            return None
        t0 = time.perf_counter()
        try:
            jpeg = encode_snapshot(image, self.cam.snapshot, boxes, colour)
        except SnapshotTooLarge as exc:
            self.log.warning("snapshot dropped: %s", exc)
            return None
        self.last_timings["snapshot_ms"] = (time.perf_counter() - t0) * 1e3
        return jpeg

    def _publish(self, jpeg: bytes, event_id: bytes) -> None:
        try:
            self.ctx.publish_snapshot(self.cam.name, jpeg, event_id)
            self.counters["snapshots"] += 1
        except Exception:  # best effort by contract: a snapshot never stops the camera
            self.log.exception("publishing a snapshot failed")

    # --- health ----------------------------------------------------------------------------
    def _watchdog(self, got_frame: bool) -> None:
        now = time.monotonic()
        if got_frame:
            if self._offline:  # the flag flips only once the restore is durable
                self.ctx.emit(
                    "fault",
                    self.event_source,
                    {
                        "active": False,
                        "code": faults.CAMERA_OFFLINE,
                        "down_s": round(now - self._offline_since, 1),
                    },
                )
                self._offline = False
            if self.state != "ok":
                self.set_state("ok")
            return
        if self.source.finished:
            return
        age = self.source.frame_age(now)
        limit = self.cam.stall_timeout_s
        if age < limit:
            return
        if not self._offline:
            why = self.source.last_error or "no frames"
            self.set_state("degraded", f"camera offline: {why}")
            if now - self._last_kick >= limit:
                self._last_kick = now
                self.source.request_reconnect()
            self.ctx.emit(  # the flag flips only once the fault is durable
                "fault",
                self.event_source,
                {"active": True, "code": faults.CAMERA_OFFLINE, "error": why[:60]},
            )
            self._offline = True
            self._offline_since = now - age
        elif now - self._last_kick >= limit:
            self._last_kick = now
            self.source.request_reconnect()

    def status(self) -> dict[str, Any]:
        out = super().status()
        out |= self.counters
        out["source"] = self.source.status()
        if self.tracker.suppressed:
            out["suppressed"] = self.tracker.suppressed
        if self.last_timings:
            out["ms"] = {k[:-3]: round(v, 1) for k, v in self.last_timings.items()}
        return out


def _ints(box: Box) -> list[int]:
    return [round(v) for v in box]


def build_pipelines(ctx: Context) -> list[Pipeline]:
    from edge.vision.detector import resolve_model

    vision: VisionConfig = ctx.config.vision
    cams = [c for c in vision.cameras if c.enabled]
    # One interpreter per model, run at the lowest threshold any of its cameras asks for; each
    # camera then keeps the boxes over its own threshold (the model's default if not set).
    model_of = {
        c.name: (c.model or vision.model, c.model_family or vision.model_family) for c in cams
    }
    defaults = {m: resolve_model(*m)[1] for m in set(model_of.values())}
    lowest = dict(defaults)
    for c in cams:
        if c.person.enabled and c.person.threshold is not None:
            m = model_of[c.name]
            lowest[m] = min(lowest[m], c.person.threshold)
    pipelines: list[Pipeline] = []
    for cam in cams:
        model = model_of[cam.name]
        detector = None
        if cam.person.enabled:
            detector = shared_detector(
                model[0], vision.detector_threads, vision.delegate, lowest[model], family=model[1]
            )
        pipelines.append(CameraPipeline(ctx, cam, detector, min_score=defaults[model]))
    return pipelines
