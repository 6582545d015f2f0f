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
from tests.tcp_freeze_proxy import FreezeProxy
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


def capture_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("capture-")]


def test_frozen_stream_is_offline_until_it_flows_again(frames_dir):
    """The server stops sending without closing anything (SIGSTOP: a hung camera or encoder).

    The source must notice the silence, raise `camera_offline`, report the camera degraded, and
    keep trying with fresh captures while the old one may still be stuck in a read; when the
    server goes on, frames flow again and the fault clears; the capture threads stay bounded.
    """
    server = RtspServer(frames_dir, fps=10)
    server.start()
    try:
        ctx = RecordingContext(vision_config({"name": "yard", "url": server.url} | FAST_RECOVERY))
        [pipeline] = build_pipelines(ctx)
        threads_before = {t.ident for t in threading.enumerate()}
        fds_before = open_fds()
        thread, stop = start(pipeline)
        most_captures = 0
        try:
            for cycle in range(2):
                assert ctx.wait_for(lambda: pipeline.counters["frames"] >= 10, 30), (
                    f"cycle {cycle}: no frames: {pipeline.status()}"
                )
                assert pipeline.state == "ok"
                server.freeze()
                frozen_at = time.monotonic()
                assert ctx.wait_for(lambda c=cycle: len(faults(ctx, True)) > c, 15), (
                    pipeline.status()
                )
                assert time.monotonic() - frozen_at < FAST_RECOVERY["stall_timeout_s"] + 3
                offline = faults(ctx, True)[-1]
                assert offline.data["code"] == "camera_offline"
                status = pipeline.status()
                assert status["state"] == "degraded" and "camera offline" in status["detail"]
                assert status["source"]["connected"] is False
                frames_when_frozen = pipeline.counters["frames"]
                deadline = time.monotonic() + 8  # several stall periods, frozen
                while time.monotonic() < deadline:
                    most_captures = max(most_captures, len(capture_threads()))
                    assert pipeline.state == "degraded", pipeline.status()
                    time.sleep(0.2)
                assert pipeline.counters["frames"] == frames_when_frozen  # nothing stale
                server.thaw()
                assert ctx.wait_for(lambda c=cycle: len(faults(ctx, False)) > c, 30), (
                    pipeline.status()
                )
                assert faults(ctx, False)[-1].data["down_s"] >= 8
                assert ctx.wait_for(
                    lambda f=frames_when_frozen: pipeline.counters["frames"] >= f + 10, 20
                ), pipeline.status()
                assert pipeline.state == "ok"
        finally:
            finish(pipeline, thread, stop)
        assert [e.data["active"] for e in ctx.of("fault")] == [True, False, True, False]
        assert most_captures <= 1 + pipeline.source.MAX_ABANDONED, most_captures
        deadline = time.monotonic() + 15  # an abandoned capture ends when its read returns
        while time.monotonic() < deadline and capture_threads():
            time.sleep(0.2)
        leftover = [t for t in threading.enumerate() if t.ident not in threads_before]
        assert leftover == [], leftover
        assert open_fds() == fds_before, "file descriptors leaked"
    finally:
        server.stop()


def test_a_hung_stream_is_abandoned_and_a_fresh_capture_takes_over(frames_dir):
    """The stream hangs for good while the camera still answers new connections.

    A TCP proxy between camera client and server freezes the connections open at that moment
    (held open, nothing forwarded: a half-open stream after a NAT or camera reset). The read
    timeout is set far beyond the stall timeout here, so the capture thread really is blocked in
    C inside `grab()`, as when FFmpeg does not poll its interrupt: the old capture thread never
    returns in time, and only a fresh capture object on a fresh thread gets frames again.
    """
    hung = FAST_RECOVERY | {"read_timeout_s": 60.0}
    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = open_fds()
    with RtspServer(frames_dir, fps=10) as server, FreezeProxy(server.port) as proxy:
        ctx = RecordingContext(vision_config({"name": "gate", "url": proxy.url()} | hung))
        [pipeline] = build_pipelines(ctx)
        source = pipeline.source
        thread, stop = start(pipeline)
        most_captures = 0
        try:
            for cycle in range(source.MAX_ABANDONED + 1):
                assert ctx.wait_for(lambda: pipeline.counters["frames"] >= 10, 30), (
                    f"cycle {cycle}: no frames: {pipeline.status()}"
                )
                assert pipeline.state == "ok"
                frames_before = pipeline.counters["frames"]
                assert proxy.freeze() >= 1
                assert ctx.wait_for(lambda c=cycle: len(faults(ctx, True)) > c, 10), (
                    pipeline.status()
                )
                status = pipeline.status()  # what the heartbeat reports for this pipeline
                assert status["state"] == "degraded" and "camera offline" in status["detail"]
                if cycle < source.MAX_ABANDONED:  # a fresh capture takes over, frames return
                    assert ctx.wait_for(lambda c=cycle: len(faults(ctx, False)) > c, 20), (
                        pipeline.status()
                    )
                    assert ctx.wait_for(lambda: pipeline.state == "ok", 5)
                    assert source.replaced == cycle + 1
                    assert source.stuck_threads == cycle + 1
                    assert pipeline.counters["frames"] > frames_before
                    most_captures = max(most_captures, len(capture_threads()))
                    continue
                # the bound: with MAX_ABANDONED threads stuck, no further capture is started
                deadline = time.monotonic() + 3 * FAST_RECOVERY["stall_timeout_s"]
                while time.monotonic() < deadline:
                    most_captures = max(most_captures, len(capture_threads()))
                    assert pipeline.state == "degraded"
                    time.sleep(0.2)
                assert source.replaced == source.MAX_ABANDONED
                assert "stuck captures already" in pipeline.status()["source"]["error"]
                proxy.cut_frozen()  # the hung reads return: their threads end, a capture starts
                assert ctx.wait_for(lambda c=cycle: len(faults(ctx, False)) > c, 30), (
                    pipeline.status()
                )
                assert ctx.wait_for(lambda: source.stuck_threads == 0, 10)
        finally:
            finish(pipeline, thread, stop)
            proxy.cut_frozen()
        assert most_captures <= 1 + source.MAX_ABANDONED, most_captures
        assert [e.data["active"] for e in ctx.of("fault")] == [True, False] * 3
    leftover = [t for t in threading.enumerate() if t.ident not in threads_before]
    deadline = time.monotonic() + 10
    while leftover and time.monotonic() < deadline:
        time.sleep(0.2)
        leftover = [t for t in leftover if t.is_alive()]
    assert leftover == [], leftover
    assert open_fds() == fds_before, "file descriptors leaked"
