"""End to end: `wardgate run` with a camera fed from the bundled clip, over a real Mosquitto.

Person events reach `evt/person` as CBOR, each start with a JPEG on `snap/<camera>` that carries
the start event's id as its MQTT v5 correlation data.
"""

from __future__ import annotations

import cv2
import numpy as np

from protocol.topics import GatewayTopics
from tests.harness import GatewayProcess, Watcher, gateway_config_text, write_config
from tests.vision_context import DATA


def test_camera_person_events_and_snapshots_reach_the_broker(broker, tmp_path):
    camera = f"""
[[vision.cameras]]
name = "lobby"
file = "{DATA / "vtest_people.mp4"}"
realtime = false
"""
    config = write_config(tmp_path, gateway_config_text(broker, tmp_path, extra=camera))
    watcher = Watcher(broker)
    gateway = GatewayProcess(config).start()
    try:
        topics = GatewayTopics("wg/v1", "d01", "w01", "gw-test-1")

        def starts():
            return [e for e in watcher.events("person") if e.data.get("ev") == "start"]

        watcher.wait_for(lambda: len(starts()) >= 3, 90, "three person starts")
        watcher.wait_for(lambda: len(watcher.on("/snap/lobby")) >= 3, 30, "three snapshots")
        snaps = {bytes(m.properties.CorrelationData): m for m in watcher.on("/snap/lobby")}
        for start in starts()[:3]:
            assert start.source == "cam/lobby" and start.gateway == "gw-test-1"
            snap = snaps[start.id]
            assert snap.topic == topics.snap("lobby")
            assert snap.properties.ContentType == "image/jpeg" and len(snap.payload) <= 40_000
            image = cv2.imdecode(np.frombuffer(snap.payload, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape[:2] == (480, 640)
        ends = lambda: [e for e in watcher.events("person") if e.data.get("ev") == "end"]  # noqa: E731
        watcher.wait_for(lambda: len(ends()) >= len(starts()), 90, "an end for every start")
        assert {e.data["ref"] for e in ends()} >= {s.id for s in starts()}
    finally:
        code = gateway.terminate()
        watcher.stop()
    assert code == 0, gateway.log()[-3000:]
    assert "Traceback" not in gateway.log(), gateway.log()[-3000:]
