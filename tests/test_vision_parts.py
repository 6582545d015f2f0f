"""The parts of a camera pipeline on their own: config, tracker, motion gate, snapshots, sources."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edge.config import ConfigError, parse
from edge.vision.config import CameraConfig, MotionSettings, PersonSettings, SnapshotSettings
from edge.vision.motion import MotionGate
from edge.vision.regions import Regions
from edge.vision.snapshot import encode_snapshot
from edge.vision.sources import FrameSource, _redact
from edge.vision.tracker import Tracker
from tests.vision_context import DATA

GATEWAY = '[gateway]\nid = "gw1"\ndistrict = "d1"\nward = "w1"\n'


# --- config -----------------------------------------------------------------------------------
def test_full_camera_config_parses():
    config = parse(
        GATEWAY
        + """
[vision]
model = "fast"
threads = 2

[[vision.cameras]]
name = "gate"
url = "rtsp://user:pw@127.0.0.1/stream1"
fps = 4
masks = [[[0, 0], [1, 0], [1, 0.1]]]
person = { confirm_frames = 4, threshold = 0.6 }
smoke = { enabled = true }

[[vision.cameras.zones]]
name = "door"
polygon = [[0.1, 0.5], [0.4, 0.5], [0.4, 1.0], [0.1, 1.0]]

[[vision.cameras]]
name = "yard"
device = "/dev/video0"
"""
    )
    gate, yard = config.vision.cameras
    assert gate.kind == "rtsp" and yard.kind == "device"
    assert gate.person.confirm_frames == 4 and gate.smoke.enabled and not yard.smoke.enabled
    assert gate.zones[0].name == "door" and len(gate.masks[0]) == 3


@pytest.mark.parametrize(
    ("camera", "line", "message"),
    [
        (
            'name = "a"\nurl = "rtsp://x"\nfile = "a.mp4"',
            6,
            "exactly one of `url`, `device`, `file`",
        ),
        ('name = "a"\nfile = "a.mp4"\nmasks = [[[0, 0], [1, 1]]]', 9, "at least 3 [x, y] points"),
        (
            'name = "a"\nfile = "a.mp4"\nmasks = [[[0, 0], [1, 1], [1.5, 0]]]',
            9,
            "less than or equal",
        ),
        ('name = "a/b"\nfile = "a.mp4"', 7, "not a valid topic segment"),
        ('name = "a"\nfile = "a.mp4"\nfsp = 5', 9, "unknown key"),
        ('name = "a"\nfile = "a.mp4"\nsmoke = { fps = 10 }', 9, "less than or equal to 3"),
    ],
)
def test_bad_camera_config_names_file_line_and_fix(camera, line, message):
    with pytest.raises(ConfigError) as caught:
        parse(GATEWAY + "\n[[vision.cameras]]\n" + camera + "\n", "site.toml")
    text = str(caught.value)
    assert text.startswith(f"site.toml:{line}: vision.cameras[0]"), text
    assert message in text, text


def test_duplicate_camera_names_are_rejected():
    with pytest.raises(ConfigError, match="camera names must be unique: a"):
        parse(
            GATEWAY
            + '[[vision.cameras]]\nname="a"\nfile="x"\n[[vision.cameras]]\nname="a"\nfile="y"\n'
        )


def test_rtsp_credentials_are_redacted_in_logs():
    assert _redact("rtsp://admin:secret@10.1.2.3:554/s1") == "rtsp://admin:***@10.1.2.3:554/s1"
    assert _redact("rtsp://10.1.2.3/s1") == "rtsp://10.1.2.3/s1"


# --- tracker ----------------------------------------------------------------------------------
def person(x: float, score: float = 0.8, y: float = 100.0):
    return ((x, y, x + 40.0, y + 100.0), score)


def kinds(events):
    return [(e.kind, e.track.id) for e in events]


def test_one_stray_box_raises_nothing_and_a_steady_person_one_start_and_one_end():
    tracker = Tracker(PersonSettings(confirm_frames=3, end_after_s=2.0))
    assert tracker.update(0.0, [person(500)]) == []  # a single false box ...
    assert tracker.update(0.2, []) == []
    assert tracker.update(0.4, []) == [] and tracker.tracks == []  # ... is forgotten silently
    events = []
    for i in range(10):  # a person walking right, seen at 5 fps, missed once
        boxes = [] if i == 4 else [person(100 + 4 * i, score=0.6 + 0.02 * i)]
        events += tracker.update(1.0 + 0.2 * i, boxes)
    assert kinds(events) == [("start", 2)]
    assert tracker.update(4.0, []) == []
    [end] = tracker.update(5.0, [])  # 2 s after it was last seen at 2.8 s
    assert end.kind == "end" and end.track.duration == pytest.approx(1.8)
    assert end.track.best_score == pytest.approx(0.78)


def test_two_people_crossing_keep_their_identities():
    tracker = Tracker(PersonSettings(confirm_frames=2))
    for i in range(12):
        tracker.update(0.2 * i, [person(100 + 10 * i), person(300 - 10 * i, y=110)])
    assert tracker.started == 2 and len(tracker.tracks) == 2
    a, b = sorted(tracker.tracks, key=lambda tr: tr.id)
    assert a.box[0] == pytest.approx(210) and b.box[0] == pytest.approx(190)


def test_zone_entered_and_left_by_the_feet():
    regions = Regions(zones=[("door", [(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)])])
    tracker = Tracker(PersonSettings(confirm_frames=1), lambda box: regions.zones_of(box, 640, 480))
    events = []
    for i, x in enumerate([250, 275, 305, 330, 315, 300, 285]):  # feet at x + 20; door: > 320
        events += tracker.update(0.2 * i, [person(x)])
    assert [(e.kind, e.zone) for e in events] == [
        ("start", None),
        ("entered", "door"),
        ("left", "door"),
    ]


def test_updates_are_rate_limited():
    tracker = Tracker(PersonSettings(confirm_frames=1, update_every_s=10))
    events = []
    for i in range(150):  # 30 s at 5 fps
        events += tracker.update(0.2 * i, [person(100 + i)])
    assert [e.kind for e in events] == ["start", "update", "update"]


def test_a_crowd_does_not_cause_an_event_storm():
    tracker = Tracker(PersonSettings(confirm_frames=1, burst=3, cooldown_s=2.0))
    crowd = [person(60 * k) for k in range(8)]
    first = tracker.update(0.0, crowd)
    assert [e.kind for e in first] == ["start"] * 3
    later = []
    for i in range(1, 26):  # 5 s later: 2 more tokens
        later += tracker.update(0.2 * i, crowd)
    assert [e.kind for e in later] == ["start"] * 2
    assert tracker.suppressed == 0  # the others are waiting, not lost


# --- motion gate ------------------------------------------------------------------------------
def tree_frames(n: int):
    cap = cv2.VideoCapture(str(DATA / "tree_motion.mp4"))
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        assert ok
        frames.append(frame)
    cap.release()
    return frames


def test_motion_gate_sees_motion_and_masks_hide_it():
    frames = tree_frames(90)
    open_gate = MotionGate(MotionSettings(warmup_frames=5))
    masked_gate = MotionGate(
        MotionSettings(warmup_frames=5), Regions(masks=[[(0, 0), (1, 0), (1, 1), (0, 1)][:4]])
    )
    seen = [open_gate.update(f) for f in frames]
    hidden = [masked_gate.update(f) for f in frames]
    assert sum(m.active for m in seen) >= 5
    assert all(m.boxes for m in seen if m.active)
    assert not any(m.active for m in hidden)


def test_motion_gate_stays_quiet_on_a_still_scene_with_sensor_noise():
    rng = np.random.default_rng(1)
    still = cv2.imread(str(DATA / "vtest_frames" / "0505.jpg"))
    gate = MotionGate(MotionSettings())
    results = []
    for _ in range(40):
        noisy = np.clip(still + rng.normal(0, 3, still.shape), 0, 255).astype(np.uint8)
        results.append(gate.update(noisy))
    assert not any(m.active for m in results)


# --- snapshots --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1920, 1080), (640, 480), (320, 240)])
def test_snapshots_fit_the_limit_even_for_noise(size):
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    settings = SnapshotSettings()
    jpeg = encode_snapshot(noise, settings, [(10, 10, 100, 200)])
    assert len(jpeg) <= 40_000
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] <= 640


def test_snapshot_of_a_real_frame_keeps_full_quality_when_it_fits():
    frame = cv2.imread(str(DATA / "vtest_frames" / "0505.jpg"))
    jpeg = encode_snapshot(frame, SnapshotSettings(max_bytes=400_000, max_width=800))
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == frame.shape


# --- sources ----------------------------------------------------------------------------------
def camera(**kw) -> CameraConfig:
    return CameraConfig(name="c", file=DATA / "tree_motion.mp4", **kw)


def test_file_source_loops_with_increasing_media_time():
    source = FrameSource(camera(loop=True, realtime=False, fps=15))
    source.start()
    try:
        seq, times = 0, []
        while len(times) < 200:  # the clip has 150 frames
            frame = source.read(seq, timeout=5)
            assert frame is not None, source.status()
            seq = frame.seq
            times.append(frame.t)
    finally:
        source.stop()
    assert not source.alive
    steps = np.diff(times)
    assert np.all(steps > 0) and np.allclose(steps, 1 / 15, atol=1e-6)
    assert source.dropped == 0  # every frame, in order, when not realtime


def test_realtime_file_source_paces_frames_and_keeps_only_the_newest():
    source = FrameSource(camera(realtime=True, fps=5))
    source.start()
    try:
        first = source.read(0, timeout=5)
        assert first is not None
        time.sleep(1.0)  # a slow consumer: frames in between are replaced, not queued
        later = source.read(first.seq, timeout=5)
        assert later is not None
        assert later.seq >= first.seq + 4 and source.dropped >= 3
        assert later.t - first.t == pytest.approx(later.captured - first.captured, abs=0.3)
    finally:
        source.stop()


def test_missing_file_is_reported_and_retried():
    source = FrameSource(
        CameraConfig(
            name="c", file=DATA / "nope.mp4", reconnect_initial_s=0.05, reconnect_max_s=0.1
        )
    )
    source.start()
    try:
        deadline = time.monotonic() + 5
        while source.failures < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.failures >= 3
        assert "no such file" in source.status()["error"]
    finally:
        source.stop()


def test_source_can_be_started_again_after_stop():
    """The runtime restarts a pipeline that raised: close() then run() on the same object."""
    source = FrameSource(camera(realtime=False))
    last_seq = 0
    for _ in range(2):
        source.start()
        try:
            frame = source.read(0, timeout=5)
            assert frame is not None and frame.seq > last_seq, source.status()
            assert frame.t == 0.0  # the file starts again from its beginning
            last_seq = source.read(frame.seq, timeout=5).seq
        finally:
            source.stop()
        assert not source.alive
