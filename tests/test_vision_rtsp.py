"""A camera on a real RTSP server (GStreamer's gst-rtsp-server, tests/rtsp_server.py) over TCP.

Stopping the server must raise a `camera_offline` fault, starting it again must clear it, and the
camera must neither crash nor leak threads or file descriptors on the way.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from edge.vision.pipeline import CameraPipeline, build_pipelines
from tests.rtsp_server import RtspServer, free_port, missing_requirements, write_frames
from tests.vision_context import DATA, RecordingContext, vision_config

_missing = missing_requirements()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"no RTSP test server: {_missing}")

FAST_RECOVERY = {
    "fps": 5,
    "stall_timeout_s": 3.0,
    "read_timeout_s": 2.0,
    "open_timeout_s": 5.0,
    "reconnect_initial_s": 0.2,
    "reconnect_max_s": 1.0,
    "person": {"enabled": False},  # the stream is under test here, not the detector
}


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    return write_frames(DATA / "smoke_synthetic.mp4", tmp_path_factory.mktemp("rtsp"), 40)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def start(pipeline: CameraPipeline) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), name="test-camera")
    thread.start()
    return thread, stop


def finish(pipeline: CameraPipeline, thread: threading.Thread, stop: threading.Event) -> None:
    stop.set()
    thread.join(15)
    pipeline.close()
    assert not thread.is_alive()


def faults(ctx: RecordingContext, active: bool) -> list:
    return [e for e in ctx.of("fault") if e.data["active"] is active]


def test_stream_down_raises_offline_fault_and_up_restores_it(frames_dir):
    server = RtspServer(frames_dir, fps=10)
    server.start()
    try:
        ctx = RecordingContext(vision_config({"name": "door", "url": server.url} | FAST_RECOVERY))
        [pipeline] = build_pipelines(ctx)
        threads_before = {t.ident for t in threading.enumerate()}
        fds_before = open_fds()
        thread, stop = start(pipeline)
        try:
            for cycle in range(2):
                assert ctx.wait_for(lambda: pipeline.counters["frames"] >= 10, 30), (
                    f"cycle {cycle}: no frames from {server.url}: {pipeline.status()}"
                )
                assert pipeline.state == "ok"
                server.stop()
                assert ctx.wait_for(lambda c=cycle: len(faults(ctx, True)) > c, 20), (
                    pipeline.status()
                )
                offline = faults(ctx, True)[-1]
                assert offline.source == "cam/door" and offline.data["code"] == "camera_offline"
                assert offline.severity.name == "WARNING"
                assert pipeline.state == "degraded"
                frames_when_down = pipeline.counters["frames"]
                time.sleep(1.5)  # reconnect attempts against a closed port meanwhile
                server.start()
                assert ctx.wait_for(lambda c=cycle: len(faults(ctx, False)) > c, 30), (
                    pipeline.status()
                )
                restored = faults(ctx, False)[-1]
                assert restored.data["code"] == "camera_offline" and restored.data["down_s"] > 0
                assert ctx.wait_for(
                    lambda f=frames_when_down: pipeline.counters["frames"] >= f + 10, 20
                )
                assert pipeline.state == "ok"
        finally:
            finish(pipeline, thread, stop)
        # one offline and one restored per outage, nothing else
        assert [(e.data["active"]) for e in ctx.of("fault")] == [True, False, True, False]
        assert pipeline.source.opens >= 3
        leftover = [t for t in threading.enumerate() if t.ident not in threads_before]
        assert leftover == [], leftover
        assert open_fds() == fds_before, "file descriptors leaked"
    finally:
        server.stop()


def test_unreachable_camera_is_offline_from_the_start_and_keeps_retrying():
    url = f"rtsp://127.0.0.1:{free_port()}/cam"  # nothing listens there
    ctx = RecordingContext(vision_config({"name": "gate", "url": url} | FAST_RECOVERY))
    [pipeline] = build_pipelines(ctx)
    fds_before = open_fds()
    thread, stop = start(pipeline)
    try:
        assert ctx.wait_for(lambda: faults(ctx, True), 10)
        assert ctx.wait_for(lambda: pipeline.source.failures >= 3, 15), pipeline.status()
        status = pipeline.status()
        assert status["state"] == "degraded" and "camera offline" in status["detail"]
        assert status["source"]["connected"] is False and status["source"]["error"]
    finally:
        finish(pipeline, thread, stop)
    assert len(faults(ctx, True)) == 1  # one fault for the whole outage, not one per retry
    assert open_fds() == fds_before
