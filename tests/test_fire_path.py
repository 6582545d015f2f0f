"""Issue 3 end to end: MicroPython node -> pty -> gateway driver -> real Mosquitto -> central ingest
process that acknowledges -> the gateway's EN 54-21 supervision sees the acknowledgement."""

from __future__ import annotations

import time

from devtools.unix_node import UnixNode
from edge import config
from edge.runtime import Gateway
from tests.central_support import CentralProcess
from tests.harness import Watcher, gateway_config_text, write_config
from tests.test_serial_nodes import NODE


def test_node_alarm_reaches_a_receiver_process_which_acknowledges_it(broker, tmp_path):
    link = tmp_path / "by-id" / "usb-wardgate-node07"
    extra = f"""
[alarm_ack]
timeout_s = 3

[[serial.ports]]
name = "nodes1"
path = "{link}"
protocol = "node"
nodes = [7]
"""
    gw = Gateway(
        config.load(write_config(tmp_path, gateway_config_text(broker, tmp_path, extra=extra)))
    )
    rx = CentralProcess(broker, tmp_path).start()
    watcher = Watcher(broker, client_id="fault-watcher")
    with UnixNode(NODE, link=link) as node:
        gw.start()
        try:
            watcher.wait_for(
                lambda: any(e.source == "n07/heat" for e in watcher.events("reading")),
                what="the node's first reading",
            )
            node.set_temperature("heat", 70.0)  # EN 54-5 A1: fixed threshold 54-65 degC
            node.wait_edge("alarm heat")
            [alarm] = watcher.wait_for_events("alarm")
            assert alarm.source == "n07/heat" and alarm.data["cause"] == "heat"
            shown = rx.wait_event(alarm.id_hex)
            assert shown["site"] == "d01/w01/gw-test-1"
            assert rx.store.queue()[0]["category"] == "fire"
            deadline = time.monotonic() + 10
            while gw.ack_supervisor.status()["acked"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(3.5)  # past the shortened EN 54-21 timeout
            status = gw.ack_supervisor.status()
            assert status["acked"] == 1 and status["pending"] == 0 and status["faults"] == 0
            assert not [e for e in watcher.events("fault") if e.source == "uplink/ack"]
        finally:
            gw.stop()
            rx.stop()
            watcher.stop()
