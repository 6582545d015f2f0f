"""A private, real Mosquitto: own config, free ports, optional TLS, passwords and ACLs.

Used by the test suite and by `wardgate demo`; never touches the machine's own Mosquitto.

Ports are chosen once, so a broker that is stopped and started again (outage tests) comes back on
the same address.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provisioning.fleet import FleetDir

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: every socket stays bound until all are chosen (two calls of a
    one-port helper can get the same port back, and a broker then cannot open its second
    listener: seen once in a full run)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


class MosquittoBroker:
    """One mosquitto process. `tls` needs a CA, server cert and key (see tests/pki.py).

    users: name -> password, hashed into a password file by the real `mosquitto_passwd`
    (or pass `password_file` made elsewhere, e.g. by provisioning). acl: ACL file text.
    require_certificate: the TLS listener demands a client certificate and takes its CN as the
    username (`use_identity_as_username`). extra_conf: appended verbatim.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        password_file: Path | None = None,
        acl: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        require_certificate: bool = False,
        crl: Path | None = None,
        persistence: bool = True,
        extra_conf: str = "",
        plain_listener: bool = True,
    ) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        plain_port, tls_port = free_ports(2)
        self.port = plain_port if plain_listener else None
        self.tls_port = tls_port if tls else None
        self.host = "127.0.0.1"
        self.conf_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [
            "per_listener_settings false",
            "user root",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "message_size_limit 0",
            "set_tcp_nodelay true",  # as the provisioned broker: no Nagle delay on alarms
        ]
        if users is not None or password_file is not None:
            if password_file is None:
                password_file = self.dir / "passwd"
                password_file.write_text("")
                for name, password in users.items():
                    subprocess.run(
                        [MOSQUITTO_PASSWD, "-b", str(password_file), name, password],
                        check=True,
                        capture_output=True,
                    )
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            acl_path = self.dir / "acl"
            acl_path.write_text(acl)
            lines.append(f"acl_file {acl_path}")
        if self.port is not None:
            lines.append(f"listener {self.port} 127.0.0.1")
        if tls:
            ca, cert, key = tls
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {ca}",
                f"certfile {cert}",
                f"keyfile {key}",
                "tls_version tlsv1.2",
            ]
            if require_certificate:
                lines += ["require_certificate true", "use_identity_as_username true"]
            if crl is not None:
                lines.append(f"crlfile {crl}")
        lines.append(extra_conf)
        self.conf_path.write_text("\n".join(lines) + "\n")

    # --- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        if self.running:
            return self
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            for port in (self.port, self.tls_port):
                if port is not None:
                    wait_for_port(port, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start:\n{self.log()}") from None
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_broker(fleet: FleetDir, workdir: Path) -> MosquittoBroker:
    """The fleet's own mosquitto.conf, password file, ACL, certificates and CRL, loaded into a
    private Mosquitto on free loopback ports (for the demo and the tests). The ports are set as
    `cert_port` and `password_port` on the returned broker; `stop()` it when done."""
    from provisioning.broker import render_mosquitto_conf

    cert_port, password_port = free_ports(2)
    conf = render_mosquitto_conf(
        fleet.settings(),
        files_dir=str(fleet.broker_dir),
        bind="127.0.0.1",
        cert_port=cert_port,
        password_port=password_port,
    )
    broker = MosquittoBroker(workdir, extra_conf=conf, plain_listener=False)
    broker.start()
    try:
        for port in (cert_port, password_port):
            wait_for_port(port, 10)
    except TimeoutError:
        broker.stop()
        raise RuntimeError(f"mosquitto did not start:\n{broker.log()}") from None
    broker.cert_port, broker.password_port = cert_port, password_port
    return broker
