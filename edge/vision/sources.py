"""Frame sources: RTSP streams, USB cameras and video files through OpenCV, each in its own thread.

The capture thread reads the stream at its own pace and keeps only the newest frame, so a slow
detector never backs up a camera's buffer (the frames it misses are counted as `dropped`). A
failing or silent stream is released and reopened with capped exponential backoff and jitter;
the pipeline decides when a silence counts as a camera fault (see pipeline.py).

OpenCV's open and read timeouts bound most calls, but not every path in FFmpeg or a driver polls
them, and a thread blocked in C cannot be killed. So the source watches its own capture thread:
when the pipeline's stall watchdog asks for a reconnect and the thread has been inside one
OpenCV call for `stall_timeout_s` (an open: its own timeout and probe time, plus 5 s), the thread
is abandoned and a fresh capture object and thread take over. An abandoned thread publishes
nothing more; it releases its capture and ends when its call returns. At most `MAX_ABANDONED`
are kept; past that, no new capture starts until one of them ends (the camera stays offline,
and its status says why).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

import cv2
import numpy as np

from edge.clock import mono_s
from edge.vision.config import CameraConfig
from protocol.retry import Backoff

# FFmpeg options reach OpenCV only through this process-wide variable, read when a capture opens.
_FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_open_lock = threading.Lock()


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    image: np.ndarray  # BGR
    seq: int  # 1, 2, ... per source; gaps are frames the pipeline did not take in time
    t: float  # seconds: media time for files (monotonic across loops), monotonic clock otherwise
    captured: float  # time.monotonic() at capture


class FrameSource:
    """One camera's capture thread and its newest-frame slot."""

    MAX_ABANDONED = 2  # capture threads left stuck in OpenCV, at most, before we stop adding

    def __init__(self, cam: CameraConfig, log: logging.Logger | None = None) -> None:
        self.cam = cam
        self.log = log or logging.getLogger(f"wardgate.cam.{cam.name}")
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._taken_seq = 0
        self._seq = 0
        self._stop = threading.Event()
        self._reconnect = threading.Event()
        self._thread: threading.Thread | None = None
        # capture-thread watchdog: the current thread is generation `_gen`; older ones are
        # abandoned and end as soon as their OpenCV call returns
        self._gen = 0
        self._guard = threading.Lock()
        self._busy: tuple[int, str, float] | None = None  # (gen, call, since) inside OpenCV
        self._abandoned: list[threading.Thread] = []
        self.replaced = 0  # capture threads abandoned while stuck in OpenCV
        self.connected = False
        self.finished = False  # a file without `loop` has been read to its end
        self.last_frame_at: float | None = None  # time.monotonic() of the newest frame
        self.started_at = time.monotonic()
        self.opens = 0
        self.failures = 0
        self.dropped = 0
        self.last_error = ""
        self._pace_every_frame = cam.kind == "file" and not cam.realtime

    # --- consumer side -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()  # started again after stop(): the supervisor restarts pipelines
        self.finished = False
        with self._cond:
            self._latest = None  # never hand out a frame from before the restart
            self._taken_seq = self._seq
        self.started_at = time.monotonic()
        with self._guard:
            self._start_thread()

    def _start_thread(self) -> None:
        """A capture thread of a new generation (under `_guard`)."""
        self._gen += 1
        self._busy = None
        self._thread = threading.Thread(
            target=self._run, args=(self._gen,), name=f"capture-{self.cam.name}", daemon=True
        )
        self._thread.start()

    def _live(self, gen: int) -> bool:
        """Should the capture thread of generation `gen` go on?"""
        return gen == self._gen and not self._stop.is_set()

    def read(self, after_seq: int, timeout: float) -> Frame | None:
        """The newest frame newer than `after_seq`, waiting up to `timeout` s for one."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._latest is not None and self._latest.seq > after_seq,
                timeout=timeout,
            ):
                return None
            frame = self._latest
            assert frame is not None
            self.dropped += max(0, frame.seq - max(after_seq, self._taken_seq) - 1)
            self._taken_seq = frame.seq
            self._cond.notify_all()
            return frame

    def request_reconnect(self) -> None:
        """Ask the capture thread to drop the connection and open it again (stall watchdog).

        A thread that cannot hear it, stuck in an OpenCV call, is replaced (see `watchdog`).
        """
        self._reconnect.set()
        self.watchdog()

    def watchdog(self, now: float | None = None) -> bool:
        """Replace a capture thread stuck in one OpenCV call too long; True if it was replaced."""
        now = mono_s() if now is None else now
        with self._guard:
            thread, busy = self._thread, self._busy
            if thread is None or self._stop.is_set() or busy is None or busy[0] != self._gen:
                return False
            _, call, since = busy
            cam = self.cam
            limit = cam.stall_timeout_s
            if call == "open":  # an open may take its timeout and the probe, legitimately
                limit = max(limit, cam.open_timeout_s + cam.probe_s + 5.0)
            stuck_s = now - since
            if stuck_s < limit:
                return False
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            if len(self._abandoned) >= self.MAX_ABANDONED:
                self.last_error = (
                    f"capture stuck in {call} for {stuck_s:.0f} s;"
                    f" {len(self._abandoned)} stuck captures already, not starting another"
                )
                self.connected = False
                self.log.warning("%s", self.last_error)
                return False
            self._abandoned.append(thread)
            self.replaced += 1
            self.connected = False
            self.last_error = f"capture stuck in {call} for {stuck_s:.0f} s: replaced"
            self.log.warning("%s", self.last_error)
            self._start_thread()
            return True

    def frame_age(self, now: float | None = None) -> float:
        """Seconds since the newest frame (or since start, if none came yet)."""
        now = time.monotonic() if now is None else now
        return now - (self.last_frame_at if self.last_frame_at is not None else self.started_at)

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            limit = timeout or self.cam.open_timeout_s + self.cam.read_timeout_s + 5
            thread.join(limit)
            with self._guard:
                if thread.is_alive():
                    self.log.warning("capture thread still blocked in OpenCV after %.0f s", limit)
                    self._abandoned.append(thread)  # it ends when its call returns
                self._gen += 1  # whatever it does next, it is no longer ours
                self._busy = None
                self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stuck_threads(self) -> int:
        """Abandoned capture threads still blocked in OpenCV."""
        with self._guard:
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            return len(self._abandoned)

    def status(self) -> dict[str, Any]:
        stuck = self.stuck_threads
        return {
            "connected": self.connected,
            "opens": self.opens,
            "failures": self.failures,
            "dropped": self.dropped,
            **({"replaced": self.replaced} if self.replaced else {}),
            **({"stuck_threads": stuck} if stuck else {}),
            **({"error": self.last_error} if self.last_error and not self.connected else {}),
        }

    # --- OpenCV calls, watched -----------------------------------------------------------------
    def _enter(self, gen: int, call: str) -> None:
        with self._guard:
            if gen == self._gen:
                self._busy = (gen, call, mono_s())

    def _leave(self, gen: int) -> None:
        with self._guard:
            if self._busy is not None and self._busy[0] == gen:
                self._busy = None

    def _release(self, gen: int, cap: cv2.VideoCapture) -> None:
        self._enter(gen, "release")
        try:
            cap.release()
        finally:
            self._leave(gen)

    # --- capture thread ------------------------------------------------------------------------
    def _run(self, gen: int) -> None:
        delays = self._delays()
        while self._live(gen):
            cap = self._open(gen)
            if cap is not None:
                try:
                    got_frames = self._pump(cap, gen)
                finally:
                    self._release(gen, cap)
                    if gen == self._gen:
                        self.connected = False
                if self.finished or not self._live(gen):
                    break
                if got_frames:
                    delays = self._delays()  # it worked for a while: start backing off afresh
            elif not self._live(gen):
                break
            else:
                self.failures += 1
            delay = delays.next()
            self.log.info("reconnecting in %.1f s (%s)", delay, self.last_error or "stream ended")
            self._stop.wait(delay)
        if gen != self._gen:
            self.log.info("abandoned capture thread ended")

    def _delays(self) -> Backoff:
        return Backoff(self.cam.reconnect_initial_s, self.cam.reconnect_max_s)

    def _open(self, gen: int) -> cv2.VideoCapture | None:
        try:
            self._enter(gen, "open")
            cap = self._open_capture()
        finally:
            self._leave(gen)
        if cap is not None and not self._live(gen):  # abandoned or stopped meanwhile
            self._release(gen, cap)
            return None
        return cap

    def _open_capture(self) -> cv2.VideoCapture | None:
        cam = self.cam
        self._reconnect.clear()
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(cam.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(cam.read_timeout_s * 1000),
            cv2.CAP_PROP_N_THREADS,
            cam.decode_threads,
        ]
        if cam.kind == "rtsp":
            with _open_lock:
                previous = os.environ.get(_FFMPEG_ENV)
                probe_us = int(cam.probe_s * 1e6)
                os.environ[_FFMPEG_ENV] = (
                    f"rtsp_transport;{cam.transport}|analyzeduration;{probe_us}"
                )
                try:
                    cap = cv2.VideoCapture(cam.url, cv2.CAP_FFMPEG, params)
                finally:
                    if previous is None:
                        os.environ.pop(_FFMPEG_ENV, None)
                    else:
                        os.environ[_FFMPEG_ENV] = previous
            where = _redact(cam.url or "")
        elif cam.kind == "device":
            device = cam.device
            index = int(device) if isinstance(device, int) or str(device).isdigit() else None
            cap = cv2.VideoCapture(index if index is not None else str(device), cv2.CAP_V4L2)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            where = str(device)
        else:
            where = str(cam.file)
            if cam.file is None or not cam.file.is_file():
                self.last_error = f"{where}: no such file"
                return None
            cap = cv2.VideoCapture(str(cam.file), cv2.CAP_FFMPEG, params[-2:])
        self.opens += 1
        if not cap.isOpened():
            cap.release()
            self.last_error = f"cannot open {where}"
            self.log.warning("%s", self.last_error)
            return None
        self._reconnect.clear()  # a watchdog kick during a slow open is answered by the open
        self.log.info("opened %s", where)
        return cap

    def _pump(self, cap: cv2.VideoCapture, gen: int) -> bool:
        """Read until the stream fails, stalls, ends or we are stopped; True if frames came."""
        cam = self.cam
        interval = 1.0 / cam.fps
        is_file = cam.kind == "file"
        file_fps = cap.get(cv2.CAP_PROP_FPS) if is_file else 0.0
        file_fps = file_fps if 1.0 <= file_fps <= 240.0 else 25.0
        index = 0  # frames grabbed from a file since it was opened
        media_offset = self._latest.t + 1.0 / file_fps if (is_file and self._latest) else 0.0
        play_origin: float | None = None  # realtime files: monotonic time of media time 0
        next_due = -1.0  # media (file) or monotonic time of the next frame to keep
        got = False
        while self._live(gen):
            if self._reconnect.is_set():
                self.last_error = "stalled"
                return got
            self._enter(gen, "read")
            try:
                grabbed = cap.grab()
            finally:
                self._leave(gen)
            if not self._live(gen):
                return got
            if not grabbed:
                if is_file:
                    if got and cam.loop:
                        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        if cap.grab():
                            media_offset += index / file_fps
                            index = 0
                        else:
                            return got
                    else:
                        self.finished = got or self.finished
                        self.last_error = "" if got else f"{cam.file}: no frames"
                        return got
                else:
                    self.last_error = "read failed or timed out"
                    return got
            now = time.monotonic()
            if is_file:
                t = media_offset + index / file_fps
                index += 1
                if cam.realtime:
                    if play_origin is None:
                        play_origin = now - t
                    if play_origin + t > now:
                        self._stop.wait(play_origin + t - now)
            else:
                t = now
            if t + 1e-6 < next_due:
                continue  # above the camera's target fps: skip the costly colour conversion
            self._enter(gen, "read")
            try:
                ok, image = cap.retrieve()
            finally:
                self._leave(gen)
            if not ok or image is None:
                continue
            next_due = max(next_due + interval, t + interval / 2) if got else t + interval
            got = True
            if not self._publish(image, t, gen):
                return got
        return got

    def _publish(self, image: np.ndarray, t: float, gen: int) -> bool:
        """Make `image` the newest frame; False (and nothing published) if `gen` is not current."""
        with self._cond:
            if self._pace_every_frame:  # offline analysis: wait until the pipeline took the last
                self._cond.wait_for(
                    lambda: not self._live(gen) or self._taken_seq >= self._seq, timeout=None
                )
            if not self._live(gen):
                return False
            self.connected = True
            self.last_error = ""
            self._seq += 1
            self.last_frame_at = time.monotonic()
            self._latest = Frame(image, self._seq, t, self.last_frame_at)
            self._cond.notify_all()
            return True


def _redact(url: str) -> str:
    """rtsp://user:secret@host/... -> rtsp://user:***@host/... for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    cred, host = rest.split("@", 1)
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
