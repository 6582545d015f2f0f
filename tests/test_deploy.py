import shutil
import subprocess

import pytest

from edge.deploy import SYSTEMD_UNIT as UNIT


def unit_settings() -> dict[str, str]:
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def test_unit_is_notify_with_watchdog_restart_and_hardening():
    s = unit_settings()
    assert s["Type"] == "notify" and int(s["WatchdogSec"]) > 0 and s["Restart"] == "always"
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert key in s
    assert "run --config" in s["ExecStart"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "wardgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/wardgate/venv/bin/wardgate", "/bin/true"))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
