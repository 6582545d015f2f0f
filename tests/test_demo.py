"""The README's main job: `wardgate demo` must show the path working on built-in defaults."""

import subprocess
import sys

from tests.harness import REPO


def test_demo_runs_and_shows_heartbeat_alarm_and_command_reply():
    res = subprocess.run(
        [sys.executable, "-m", "edge.cli", "demo", "--duration", "8", "--plain"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "evt/alarm" in out and "cmd/res" in out and "tele" in out, out
    assert '"ok": true' in out
