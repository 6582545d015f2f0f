"""A real RTSP server for the camera tests: gst-rtsp-server serving JPEG frames as H.264.

Run it with Debian's /usr/bin/python3 (it needs python3-gi and gir1.2-gst-rtsp-server-1.0, which
are not in the venv):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --frames DIR --fps 10

DIR holds frame00000.jpg, frame00001.jpg, ... which are looped forever. The stream is at
rtsp://127.0.0.1:PORT/cam. The script prints `READY <port>` once it listens and exits cleanly on
SIGTERM or SIGINT. `RtspServer` below starts and stops it from the (venv) tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-ugly"
)


def missing_requirements() -> str | None:
    """Why this server cannot run here (None if it can): names the apt packages to install."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found; apt-get install {APT_PACKAGES}"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('multifilesrc', 'jpegdec', 'videoconvert', 'x264enc', 'rtph264pay')"
        " if Gst.ElementFactory.find(e) is None];"
        "print(' '.join(missing))"
    )
    try:
        out = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if out.returncode != 0:
        return f"GStreamer RTSP server not importable; apt-get install {APT_PACKAGES}"
    if out.stdout.strip():
        return f"GStreamer elements missing ({out.stdout.strip()}); apt-get install {APT_PACKAGES}"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtspServer:
    """The server as a child process of the tests; `stop()` and `start()` may be repeated."""

    def __init__(self, frames_dir: Path, port: int | None = None, fps: int = 10) -> None:
        self.frames_dir = Path(frames_dir)
        self.port = port or free_port()
        self.fps = fps
        self.proc: subprocess.Popen[str] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, __file__, "--port", str(self.port), "--frames", str(self.frames_dir)]
            + ["--fps", str(self.fps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line!r} {err[-2000:]}")
        while time.monotonic() < deadline:  # the socket listens once READY is printed
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("RTSP server is not listening")

    def freeze(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is sent (a hung camera)."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: the server goes on sending where it stopped."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.frozen:
            self.thaw()  # a stopped process would not act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.proc = None

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve(port: int, frames: Path, fps: int) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    pattern = str(frames / "frame%05d.jpg")
    launch = (
        f"( multifilesrc location={pattern} loop=true caps=image/jpeg,framerate={fps}/1 "
        "! jpegdec ! videoconvert ! video/x-raw,format=I420 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=1500 "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"FAILED cannot listen on {port}", flush=True)
        sys.exit(1)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY {port}", flush=True)
    loop.run()


def write_frames(video: Path, out_dir: Path, max_frames: int = 100) -> Path:
    """Unpack a clip into the JPEG frames the server loops (called from the venv side)."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    n = 0
    while n < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        cv2.imwrite(str(out_dir / f"frame{n:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
        n += 1
    cap.release()
    if n == 0:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise ValueError(f"{video}: no frames")
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", type=Path, required=True)
    parser.add_argument("--fps", type=int, default=10)
    args = parser.parse_args()
    _serve(args.port, args.frames, args.fps)
