"""The gateway's self-test: each check green or red, with what to do when red.

One place for the checks that `wardgate status` prints (over the running gateway's status
socket) and the technician's page shows (docs/localweb.md). The checks read the running
gateway (uplink, outbox, pipelines, alarm supervisor), so they run inside `wardgate run`; the
socket hands their result to a shell user. Standard library only.

Certificate dates are read with CPython's own PEM decoder (`ssl._ssl._test_decode_cert`, the
one `ssl` uses in its tests): `cryptography` is not in the gateway's extra (it would add ~10 MB
to every Pi for two dates). Should that private helper ever go, the check says "unknown"
(never a false green). The CRL lives on the broker, not here: `wardgate provision status`
shows its nextUpdate.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.config import CoreConfig
    from edge.runtime import Gateway

log = logging.getLogger("wardgate.selftest")

#: a certificate closer than this to its end is red: renewing needs a visit or a new bundle
CERT_WARN_DAYS = 30
#: the outbox is red above this share of `max_events` (it is holding back a long outage)
OUTBOX_WARN_SHARE = 0.5
#: free disk below this (MB) on the outbox's filesystem is red
DISK_FREE_MIN_MB = 64
#: the file name of the status socket in the outbox's directory (`health.status_socket` unset)
SOCKET_NAME = "status.sock"


def check(name: str, ok: bool, detail: str, fix: str = "") -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail, "fix": "" if ok else fix}


def socket_path(cfg: CoreConfig) -> Path:
    """Where `wardgate run` serves its self-test: `[health] status_socket`, else next to the
    outbox (the service's StateDirectory, writable under ProtectSystem=strict)."""
    return cfg.health.status_socket or cfg.outbox.path.parent / SOCKET_NAME


def cert_not_after(path: Path) -> float | None:
    """The certificate's notAfter (epoch seconds), or None if it cannot be read."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
        return ssl.cert_time_to_seconds(decoded["notAfter"])
    except (AttributeError, KeyError, OSError, ValueError, ssl.SSLError):
        return None


def _cert_check(name: str, path: Path, now: float) -> dict[str, Any]:
    not_after = cert_not_after(path)
    if not_after is None:
        return check(
            name,
            False,
            f"{path}: cannot read its dates",
            "check the file is the PEM from the enrollment bundle (wardgate provision verify)",
        )
    days = (not_after - now) / 86400
    end = time.strftime("%Y-%m-%d", time.gmtime(not_after))
    if days < 0:
        return check(
            name, False, f"expired on {end}", "re-enroll the gateway and flash the new bundle"
        )
    return check(
        name,
        days >= CERT_WARN_DAYS,
        f"valid until {end} ({days:.0f} days)",
        f"less than {CERT_WARN_DAYS} days left: re-enroll the gateway and flash the new bundle",
    )


def run_checks(gw: Gateway) -> list[dict[str, Any]]:
    """Every check, in the order a technician reads them."""
    from edge import __version__
    from protocol.events import clock

    cfg = gw.config
    now = time.time()
    up = gw.uplink.status()
    tls = cfg.uplink.tls
    where = f"{cfg.uplink.host}:{cfg.uplink.port}"
    out: list[dict[str, Any]] = []
    if not up["connected"]:
        error = up.get("last_error") or "no answer"
        out.append(
            check(
                "broker",
                False,
                f"not connected to {where} ({error})",
                "check the network cable/LTE, that the broker host resolves and answers on "
                "that port, and the journal (journalctl -u wardgate)",
            )
        )
    elif tls is None or tls.cert is None:
        how = "without TLS" if tls is None else "over TLS with a password, no client certificate"
        out.append(
            check(
                "broker",
                False,
                f"connected to {where} {how}",
                "a deployed gateway uses mutual TLS: flash the enrollment bundle "
                "([uplink.tls] ca, cert, key)",
            )
        )
    else:
        out.append(check("broker", True, f"connected to {where} over mutual TLS"))
    if tls is not None:
        out.append(_cert_check("CA certificate", tls.ca, now))
        if tls.cert is not None:
            out.append(_cert_check("gateway certificate", tls.cert, now))
    synced = clock.synced()
    out.append(
        check(
            "clock",
            synced,
            "synchronised (NTP)" if synced else "not synchronised: event times may be wrong",
            "the gateway needs NTP (UDP 123) to its time server: timedatectl timesync-status",
        )
    )
    depth = len(gw.outbox)
    limit = cfg.outbox.max_events
    evicted = sum(gw.outbox.evictions.values())
    disk = gw.outbox.disk_state()
    detail = f"{depth} events waiting (limit {limit}), {evicted} evicted, disk {disk['state']}"
    out.append(
        check(
            "outbox",
            depth <= limit * OUTBOX_WARN_SHARE and disk["state"] == "ok",
            detail,
            "events are piling up: the broker has been unreachable for long, or the disk "
            "budget is reached ([outbox] disk_budget_mb)",
        )
    )
    try:
        import shutil

        free_mb = shutil.disk_usage(cfg.outbox.path.parent).free // 2**20
    except OSError:
        free_mb = -1
    out.append(
        check(
            "disk",
            free_mb >= DISK_FREE_MIN_MB,
            f"{free_mb} MB free where the outbox is (budget {cfg.outbox.disk_budget_mb} MB)",
            "free space on the SD card (old logs: journalctl --vacuum-size=50M)",
        )
    )
    for p in gw.pipelines:
        st = p.status()
        state = st.get("state", "?")
        reason = st.get("reason") or st.get("detail") or ""
        out.append(
            check(
                f"pipeline {p.name}",
                state == "ok",
                state + (f": {reason}" if reason else ""),
                "see the journal (journalctl -u wardgate) for this pipeline's error; check "
                "its device (camera address, serial cable)",
            )
        )
    supervisor = gw.ack_supervisor
    if supervisor is not None:
        ack = supervisor.status()
        out.append(
            check(
                "alarm path",
                ack["faulted"] == 0,
                f"{ack['pending']} alarm(s) awaiting the receiver's acknowledgement, "
                f"{ack['faulted']} past the deadline",
                "the receiving centre has not acknowledged an alarm in time: call it, check "
                "the broker connection",
            )
        )
    firmware = _firmware_versions(gw)
    versions = f"wardgate {__version__}"
    if firmware:
        versions += "; nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(firmware.items()))
    out.append(check("versions", True, versions))
    return out


def _firmware_versions(gw: Gateway) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in gw.pipelines:
        for label, node in (p.status().get("nodes") or {}).items():
            if isinstance(node, dict) and node.get("firmware"):
                out[label] = str(node["firmware"])
    return out


def report(gw: Gateway) -> dict[str, Any]:
    checks = run_checks(gw)
    return {
        "gateway": gw.config.gateway.id,
        "ok": all(c["ok"] for c in checks),
        "checks": checks,
    }


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        gw = self.server.gateway  # type: ignore[attr-defined]
        try:
            body = report(gw)
        except Exception as exc:  # the socket answers even when a check breaks
            log.exception("self-test failed")
            body = {"ok": False, "checks": [check("self-test", False, repr(exc), "report this")]}
        self.wfile.write(json.dumps(body, default=str).encode() + b"\n")


class StatusSocket:
    """A unix socket that answers every connection with the self-test as one JSON line.

    File permissions are the access control (0660: the service's user and group): no password
    on the gateway's shell side, nothing on the network."""

    def __init__(self, gw: Gateway, path: Path) -> None:
        self.path = path
        if path.is_socket():
            path.unlink()  # a previous run's: nobody else serves it (systemd runs one gateway)
        self.server = socketserver.ThreadingUnixStreamServer(str(path), _Handler)
        self.server.daemon_threads = True
        self.server.gateway = gw  # type: ignore[attr-defined]
        os.chmod(path, 0o660)
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.5,), name="status-socket", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:
            self.path.unlink()
        except OSError:
            pass


def query(path: Path, timeout: float = 10.0) -> dict[str, Any]:
    """The running gateway's self-test (OSError when nothing answers at `path`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))
