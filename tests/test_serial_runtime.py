"""End to end: the MicroPython node on a pty -> `wardgate run` -> a private real Mosquitto.

The alarm reaches `evt/alarm` as CBOR of at most 100 bytes; an operator's `sensor_reset` on
cmd/sensor_reset reaches the node and is answered on cmd/res.
"""

from __future__ import annotations

import json

from devtools.unix_node import UnixNode
from tests.harness import GatewayProcess, Watcher, gateway_config_text, write_config
from tests.test_serial_nodes import NODE


def test_node_alarm_and_reset_through_the_real_gateway_and_broker(broker, tmp_path):
    link = tmp_path / "by-id" / "usb-wardgate-node07"
    serial = f"""
[[serial.ports]]
name = "nodes1"
path = "{link}"
protocol = "node"
nodes = [7]
silent_after_s = 5

[serial.readings]
min_interval_s = 0
"""
    config = write_config(tmp_path, gateway_config_text(broker, tmp_path, extra=serial))
    watcher = Watcher(broker)
    with UnixNode(NODE, link=link) as node:
        gateway = GatewayProcess(config).start()
        try:

            def heat():
                return [e for e in watcher.events("reading") if e.source == "n07/heat"]

            watcher.wait_for(heat, 20, "a first heat reading")
            assert heat()[0].data == {"value": 22.0, "unit": "degC"}

            node.press("mcp")
            edge = node.wait_edge("alarm mcp")
            watcher.wait_for(lambda: watcher.events("alarm"), 10, "the alarm")
            [msg] = watcher.on("/evt/alarm")
            assert msg.topic == "wg/v1/d01/w01/gw-test-1/evt/alarm"
            assert len(msg.payload) <= 100
            alarm = msg.event
            assert alarm.source == "n07/mcp" and alarm.data == {"cause": "call_point"}
            assert alarm.gateway == "gw-test-1" and alarm.severity.name == "CRITICAL"
            assert msg.at > 0 and edge.t_ns > 0

            node.release("mcp")
            watcher.publish(
                "wg/v1/d01/w01/gw-test-1/cmd/sensor_reset",
                json.dumps({"id": "r1", "args": {"sources": ["n07"]}}).encode(),
            )
            watcher.wait_for(lambda: watcher.on("/cmd/res"), 10, "the command reply")
            reply = json.loads(watcher.on("/cmd/res")[0].payload)
            assert reply == {"cmd": "sensor_reset", "id": "r1", "result": {"n07": "ok"}, "ok": True}
            node.wait_edge("reset")
            node.wait_output("sounder", 0)
        finally:
            code = gateway.terminate()
            watcher.stop()
    assert code == 0, gateway.log()[-3000:]
    assert "Traceback" not in gateway.log(), gateway.log()[-3000:]
