"""`wardgate status`: the running gateway's self-test over its unix socket, as an SSH user runs
it (a real `wardgate` process asking a real gateway connected to a real Mosquitto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from edge import config, selftest
from edge.runtime import Gateway
from protocol.events import clock
from tests.harness import REPO, gateway_config_text, write_config
from tests.mqtt_broker import MosquittoBroker


def wardgate_status(cfg_path, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "status", "--config", str(cfg_path), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=REPO,
    )


def wait_connected(gw):
    import time

    deadline = time.monotonic() + 10
    while not gw.uplink.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.uplink.connected


def test_status_is_green_only_when_every_check_is(tmp_path, pki, monkeypatch):
    cert, key = pki.issue("gw-test-1")  # valid for 7 days
    b = MosquittoBroker(
        tmp_path / "mtls",
        tls=pki.server_files(),
        require_certificate=True,
        acl="pattern write wg/v1/+/+/%u/#\npattern read wg/v1/+/+/%u/#\n",
        extra_conf="allow_anonymous true\n",
    ).start()
    path = write_config(tmp_path, gateway_config_text(b, tmp_path, tls=(pki.ca_path, cert, key)))
    gw = Gateway(config.load(path), config_path=path)
    gw.start()
    try:
        wait_connected(gw)
        # this sandbox's kernel clock is never NTP-synchronised: red, with what to do
        done = wardgate_status(path)
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert any(
            line.startswith("ok  broker: connected to 127.0.0.1") and "mutual TLS" in line
            for line in lines
        ), done.stdout
        assert "RED gateway certificate: valid until" in done.stdout
        assert "less than 30 days left: re-enroll" in done.stdout
        assert "ok  pipeline heartbeat: ok" in done.stdout
        assert "NOT all green" in done.stdout
        # a synchronised clock and a certificate within the threshold: all green, exit 0
        monkeypatch.setattr(clock, "synced", lambda: True)
        monkeypatch.setattr(selftest, "CERT_WARN_DAYS", 3)
        done = wardgate_status(path, "--json")
        result = json.loads(done.stdout)
        assert done.returncode == 0, result
        names = [c["name"] for c in result["checks"]]
        assert names[:4] == ["broker", "CA certificate", "gateway certificate", "clock"]
        assert {"outbox", "disk", "pipeline heartbeat", "alarm path", "versions"} <= set(names)
        assert all(c["ok"] and c["fix"] == "" for c in result["checks"])
    finally:
        gw.stop()
        b.stop()
    done = wardgate_status(path)
    assert done.returncode == 1
    assert "the gateway is not running or does not answer at" in done.stderr
    assert "systemctl status wardgate" in done.stderr


def test_status_without_tls_says_to_flash_the_bundle(tmp_path, broker):
    sock = tmp_path / "s.sock"
    text = gateway_config_text(broker, tmp_path).replace(
        "[health]", f'[health]\nstatus_socket = "{sock}"'
    )
    path = write_config(tmp_path, text)
    gw = Gateway(config.load(path), config_path=path)
    gw.start()
    try:
        wait_connected(gw)
        assert sock.is_socket() and oct(sock.stat().st_mode & 0o777) == "0o660"
        done = wardgate_status(path)
        assert done.returncode == 1
        assert "RED broker: connected to 127.0.0.1" in done.stdout
        assert "without TLS" in done.stdout
        assert "-> a deployed gateway uses mutual TLS" in done.stdout
    finally:
        gw.stop()
    assert not sock.exists()
