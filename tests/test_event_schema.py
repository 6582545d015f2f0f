"""The event contract as a JSON Schema (protocol/schema/events.schema.json, draft 2020-12),
checked against what a real gateway puts on the wire.

A `wardgate run` process with the MicroPython sensor node on a pty (readings, a heat alarm), a
second expected node that never speaks (`silent`), a serial port that is not there (`port`),
the test source (readings, test alarms), the `test-alarm` command and a 1 s acknowledgement
timeout that nobody meets (`alarm_unacknowledged`), against a private Mosquitto: every payload
on evt/# and tele is decoded and its JSON form validated. Person, smoke and camera events are
validated where the real camera pipeline emits them (tests/vision_context.py checks every event
of the vision and serial pipeline tests against the schema); hand-built ones are checked below
as well.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest

from devtools.unix_node import UnixNode
from protocol import faults
from protocol.events import Event, Kind, decode
from tests import event_schema
from tests.harness import GatewayProcess, Watcher, gateway_config_text, write_config
from tests.test_serial_nodes import NODE


def test_the_schema_is_package_data_and_valid_draft_2020_12():
    text = resources.files("protocol").joinpath("schema/events.schema.json").read_text("utf-8")
    schema = json.loads(text)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["$defs"]) >= {str(k) for k in Kind}
    event_schema.validator()  # check_schema: raises on an invalid schema


@pytest.mark.parametrize("wire", ["cbor", "json"])
def test_payloads_of_a_running_gateway_match_the_schema(broker, tmp_path, wire):
    link = tmp_path / "by-id" / "usb-wardgate-node07"
    extra = f"""
[alarm_ack]
timeout_s = 1

[test_source]
enabled = true
interval_s = 0.3
alarm_every_s = 1

[serial.readings]
min_interval_s = 0

[[serial.ports]]
name = "nodes1"
path = "{link}"
protocol = "node"
nodes = [7, 9]
silent_after_s = 1

[[serial.ports]]
name = "nodes2"
path = "{tmp_path / "by-id" / "usb-not-plugged-in"}"
protocol = "node"
"""
    text = gateway_config_text(
        broker, tmp_path, extra=extra, heartbeat_s=0.5, uplink_extra=f'format = "{wire}"'
    )
    watcher = Watcher(broker, client_id="schema-watcher")
    with UnixNode(NODE, link=link) as node:
        gw = GatewayProcess(write_config(tmp_path, text)).start()
        try:
            watcher.wait_for(lambda: watcher.on("/state"), what="the gateway's birth")
            base = watcher.on("/state")[0].topic.rsplit("/", 1)[0]
            watcher.wait_for(
                lambda: any(e.source.startswith("n07/") for e in watcher.events("reading")),
                what="the node's first reading",
            )
            watcher.publish(f"{base}/cmd/test-alarm", b"{}")  # subscribed by now
            node.set_temperature("heat", 70.0)
            node.wait_edge("alarm heat")

            def seen() -> set[tuple[str, str]]:
                out = set()
                for e in watcher.events():
                    out.add((str(e.kind), e.data.get("code", e.source)))
                return out

            wanted = {
                ("alarm", "n07/heat"),
                ("alarm", "test"),
                ("alarm", "test/alarm"),
                ("reading", "test/counter"),
                ("reading", "n07/heat"),
                ("telemetry", "gateway"),
                ("fault", faults.SILENT),
                ("fault", faults.PORT_FAULT),
                ("fault", faults.ALARM_UNACKNOWLEDGED),
            }
            try:
                watcher.wait_for(lambda: wanted <= seen(), timeout=30, what="every kind")
            except AssertionError:
                raise AssertionError(
                    f"missing {wanted - seen()}; log:\n{gw.log()[-3000:]}"
                ) from None
        finally:
            gw.terminate()
            watcher.stop()
    with watcher.lock:
        payloads = [m for m in watcher.messages if "/evt/" in m.topic or m.topic.endswith("/tele")]
    assert all(m.event is not None for m in payloads), "a payload the decoder refused"
    assert all(m.payload.startswith(b"{") == (wire == "json") for m in payloads)
    kinds: dict[str, int] = {}
    for m in payloads:
        event_schema.check(m.payload)
        kinds[str(m.event.kind)] = kinds.get(str(m.event.kind), 0) + 1
        if m.event.kind == Kind.FAULT:
            assert m.event.data["code"] in faults.BY_CODE, m.event.data
    assert set(kinds) == {"alarm", "fault", "reading", "telemetry"}, kinds
    print(f"{len(payloads)} {wire} payloads of a running gateway valid: {kinds}")


def test_hand_built_camera_events_match_and_wrong_ones_do_not():
    ref = bytes(range(16))
    good = [
        Event(
            Kind.PERSON,
            "cam/gate",
            {"ev": "start", "trk": 1, "score": 0.9, "box": [1, 2, 3, 4], "size": [640, 480]},
        ),
        Event(Kind.PERSON, "cam/gate", {"ev": "entered", "trk": 1, "ref": ref, "zone": "door"}),
        Event(Kind.SMOKE, "cam/yard", {"ev": "start", "score": 0.7, "area": 0.12, "snap": True}),
        Event(Kind.SMOKE, "cam/yard", {"ev": "end", "ref": ref, "dur_s": 12.5, "best": 0.8}),
        Event(Kind.FAULT, "cam/yard", {"active": True, "code": "camera_offline", "error": "x"}),
        Event(Kind.READING, "d01/smoke", {"value": float("nan"), "unit": "%/m"}),
        Event(Kind.ALARM, "n07/smoke", {"cause": "smoke", "value": 82, "extra": [1]}),  # grows
    ]
    for event in good:
        event_schema.check(event.to_cbor())
    bad = [
        Event(Kind.FAULT, "n07", {"active": True}),  # no code
        Event(Kind.FAULT, "n07", {"active": "yes", "code": "silent"}),
        Event(Kind.ALARM, "n07/smoke", {"value": 82}),  # no cause
        Event(Kind.PERSON, "cam/gate", {"ev": "start", "trk": 1, "box": ["a", 2, 3, 4]}),
        Event(Kind.SMOKE, "cam/gate", {"ev": "middle"}),
        Event(Kind.READING, "x", {"value": "82"}),
        Event(Kind.TELEMETRY, "gateway", {"uptime_s": 1}),
    ]
    for event in bad:
        assert event_schema.problems(event), f"{event.kind} {event.data} passed"


@pytest.mark.parametrize("payload_kind", ["cbor", "json"])
def test_the_decoder_and_the_schema_agree_on_the_envelope(payload_kind):
    event = Event(Kind.ALARM, "n07/smoke", {"cause": "smoke"}, gateway="gw", seq=5)
    obj = json.loads(event.to_json())
    assert not list(event_schema.validator().iter_errors(obj))
    assert decode(event.encode(payload_kind)) == event
    for member, value in (("time_ms", -1), ("source", ""), ("id", "xyz"), ("seq", -1)):
        assert list(event_schema.validator().iter_errors(obj | {member: value})), member
