"""The README's main job: `wardgate demo` must show every path working on built-in defaults."""

import re
import subprocess
import sys


def test_demo_shows_provisioned_gateway_camera_node_alarm_and_receiver_acks(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "edge.cli", "demo", "--duration", "16", "--plain"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # the demo must not depend on the working directory
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "enrolling demo-gw-01 with the provisioning tool" in out
    # heartbeat, camera person events with snapshots, the operator's command and its reply
    for needle in ("  tele  ", "evt/person", "snap/lobby", "cmd/res", '"ok": true'):
        assert needle in out, (needle, out[-3000:])
    # the MicroPython node's smoke alarm and the test alarm, both acknowledged by the receiver
    assert re.search(r"evt/alarm .* src=n01/smoke", out), out[-3000:]
    assert re.search(r"receiver: alarm smoke from demo/ward-1/demo-gw-01 n01/smoke acked=yes", out)
    assert re.search(r"receiver: alarm test from .* acked=yes", out)
    # one clean connection all along (concurrent socket writers once broke the TLS stream)
    assert "disconnected from broker" not in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
