"""`wardgate provision verify BUNDLE`: is this bundle one a gateway can boot and connect with?

Checks, each with a message a technician can act on: the files are there with safe modes; the
config passes the gateway's own loader; the certificate is for this gateway, current, issued by
the fleet CA and not revoked; the key belongs to the certificate; and, when the broker answers, a
real MQTT v5 connection over TLS with this identity is accepted.
"""

from __future__ import annotations

import dataclasses
import shlex
import socket
import ssl
import stat
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from provisioning import bundle, pki

OK, FAIL, WARN, SKIP = "ok", "FAIL", "warn", "skip"


@dataclasses.dataclass(frozen=True)
class Check:
    status: str
    name: str
    message: str


@dataclasses.dataclass
class Result:
    bundle: Path
    checks: list[Check] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def add(self, status: str, name: str, message: str) -> None:
        self.checks.append(Check(status, name, message))


def verify(
    directory: Path,
    *,
    fleet_ca: Path | None = None,
    crl: Path | None = None,
    connect: bool = True,
    require_broker: bool = False,
    host: str | None = None,
    port: int | None = None,
    timeout: float = 5.0,
) -> Result:
    directory = Path(directory)
    result = Result(directory)
    if not directory.is_dir():
        result.add(FAIL, "bundle", f"{directory}: no such folder")
        return result
    if fleet_ca is None and crl is None:
        fleet_ca, crl = _fleet_files(directory)

    missing = [
        rel
        for rel in (bundle.CONFIG, bundle.CERT, bundle.KEY, bundle.CA_CERT)
        if not (directory / rel).is_file()
    ]
    if missing:
        result.add(FAIL, "files", f"missing: {', '.join(missing)}")
        return result
    for rel in bundle.SECRET_FILES + (bundle.CONFIG,):
        path = directory / rel
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            mode = stat.S_IMODE(path.stat().st_mode)
            result.add(
                FAIL, "modes", f"{rel} is mode {mode:04o}; secrets must be 0600 (chmod 600 {path})"
            )

    cfg = _check_config(directory, result)
    cert = _check_certificate(directory, result, cfg, fleet_ca, crl)
    _check_key(directory, result, cert)
    if cfg is not None:
        _check_password(directory, result, cfg)
    if connect and cfg is not None and result.ok:
        _check_broker(directory, result, cfg, host, port, timeout, require_broker)
    elif connect and cfg is not None:
        result.add(SKIP, "broker", "not tried: fix the problems above first")
    return result


def _fleet_files(directory: Path) -> tuple[Path | None, Path | None]:
    """A bundle inside a fleet directory (FLEET/bundles/<id>) is checked against that fleet."""
    fleet = directory.resolve().parent.parent
    ca = fleet / "ca" / "ca.crt"
    crl = fleet / "broker" / "crl.pem"
    return (ca if ca.is_file() else None), (crl if crl.is_file() else None)


def _env(directory: Path) -> dict[str, str]:
    out = {}
    path = directory / bundle.PAYLOAD / "gateway.env"
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                parts = shlex.split(value)
                out[key] = parts[0] if parts else ""
    return out


def _local(directory: Path, device_path: Path | None) -> Path | None:
    """The bundle file that will be at `device_path` on the gateway."""
    if device_path is None:
        return None
    conf_dir = Path(_env(directory).get("WARDGATE_CONF_DIR", "/etc/wardgate"))
    try:
        return directory / bundle.ETC / Path(device_path).relative_to(conf_dir)
    except ValueError:
        return None


def _check_config(directory: Path, result: Result):
    from edge.config import ConfigError, load

    path = directory / bundle.CONFIG
    try:
        cfg = load(path)
    except ConfigError as exc:
        result.add(FAIL, "config", "config.toml does not load:\n    " + "\n    ".join(exc.problems))
        return None
    problems = []
    tls = cfg.uplink.tls
    if tls is None or tls.cert is None:
        problems.append("uplink.tls with cert and key is required for a provisioned gateway")
    else:
        for key, value in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)):
            local = _local(directory, value)
            if local is None or not local.is_file():
                problems.append(f"uplink.tls.{key} = {str(value)!r} is not a file of this bundle")
    if cfg.uplink.password_file is not None:
        local = _local(directory, cfg.uplink.password_file)
        if local is None or not local.is_file():
            problems.append(
                f"uplink.password_file = {str(cfg.uplink.password_file)!r} is not in this bundle"
            )
    if problems:
        result.add(FAIL, "config", "; ".join(problems))
    else:
        result.add(
            OK, "config", f"loads; gateway {cfg.gateway.id}, topics under {cfg.topics.base}/"
        )
    return cfg


def _check_certificate(
    directory: Path, result: Result, cfg, fleet_ca: Path | None, crl: Path | None
):
    cert_path = directory / bundle.CERT
    try:
        cert = pki.load_cert(cert_path.read_bytes())
    except ValueError as exc:
        result.add(FAIL, "certificate", f"{bundle.CERT} is not a PEM certificate ({exc})")
        return None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if cfg is not None and cn != cfg.gateway.id:
        result.add(
            FAIL,
            "certificate",
            f"CN is {cn!r} but the config is for gateway "
            f"{cfg.gateway.id!r}: the broker would treat it as {cn!r}",
        )
    now = pki.now()
    if cert.not_valid_after_utc < now:
        result.add(
            FAIL,
            "certificate",
            f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            f"re-issue it (`wardgate provision run ... --reissue {cn}`)",
        )
        return cert
    if cert.not_valid_before_utc > now:
        result.add(
            FAIL,
            "certificate",
            f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
            "UTC (is this machine's clock right?)",
        )
        return cert

    anchors = []
    bundle_ca = pki.load_cert((directory / bundle.CA_CERT).read_bytes())
    if fleet_ca is not None:
        fleet = pki.load_cert(fleet_ca.read_bytes())
        anchors.append(("the fleet CA " + str(fleet_ca), fleet))
        if bundle_ca != fleet:
            result.add(
                FAIL,
                "ca",
                f"{bundle.CA_CERT} is not the fleet CA ({fleet_ca}): the "
                "gateway would not trust the broker",
            )
    else:
        anchors.append((bundle.CA_CERT, bundle_ca))
    label, anchor = anchors[0]
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store([anchor]))
            .time(now)
            .build_client_verifier()
        )
        verifier.verify(cert, [])
    except verification.VerificationError as exc:
        result.add(
            FAIL,
            "chain",
            f"gateway.crt (issuer {cert.issuer.rfc4514_string()}) was not issued by {label} "
            f"({anchor.subject.rfc4514_string()}, sha256 {pki.fingerprint(anchor)[:23]}...): "
            f"a foreign certificate? ({exc})",
        )
        return cert
    days = (cert.not_valid_after_utc - now).days
    result.add(
        OK,
        "certificate",
        f"CN {cn}, issued by {anchor.subject.rfc4514_string()}, "
        f"valid {days} more days, serial {cert.serial_number:x}",
    )
    if days < 30:
        result.add(WARN, "certificate", f"expires in {days} days; re-issue soon")
    if crl is not None:
        revocations = x509.load_pem_x509_crl(crl.read_bytes())
        entry = revocations.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            result.add(
                FAIL,
                "revocation",
                f"certificate {cert.serial_number:x} was revoked on "
                f"{entry.revocation_date_utc:%Y-%m-%d} ({pki.crl_reason(entry)}): this bundle "
                "is void; the broker refuses it",
            )
        else:
            result.add(OK, "revocation", f"not on the CRL ({crl})")
        next_update = revocations.next_update_utc
        if next_update is not None and next_update < now:
            result.add(
                WARN,
                "crl",
                f"{crl} expired at {next_update:%Y-%m-%d %H:%M} UTC: mosquitto refuses every "
                "client until it is renewed (`wardgate provision crl FLEET`)",
            )
    return cert


def _check_key(directory: Path, result: Result, cert) -> None:
    try:
        key = serialization.load_pem_private_key((directory / bundle.KEY).read_bytes(), None)
    except (ValueError, TypeError) as exc:
        result.add(FAIL, "key", f"{bundle.KEY} cannot be loaded ({exc})")
        return
    if cert is None:
        return
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        result.add(
            FAIL,
            "key",
            "gateway.key does not belong to gateway.crt (a swapped key?): "
            "the TLS handshake would fail; rebuild or re-issue the bundle",
        )
    else:
        result.add(OK, "key", "matches the certificate")


def _check_password(directory: Path, result: Result, cfg) -> None:
    local = _local(directory, cfg.uplink.password_file)
    if local is not None and local.is_file() and not local.read_text().strip():
        result.add(FAIL, "password", f"{local.relative_to(directory)} is empty")


def _check_broker(directory, result, cfg, host, port, timeout, require_broker) -> None:
    from protocol import mqtt as policy

    host = host or cfg.uplink.host
    port = port or cfg.uplink.port
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        status = FAIL if require_broker else SKIP
        result.add(status, "broker", f"{host}:{port} not reachable ({exc}); connection not tried")
        return
    tls = cfg.uplink.tls
    password_file = None
    if cfg.uplink.password_file is not None:
        password_file = _local(directory, cfg.uplink.password_file)
    # The broker forces the client id to the gateway id (use_username_as_clientid): this
    # connection *is* the gateway's. It resumes the gateway's session (clean_start false,
    # the config's session expiry) and acknowledges nothing (manual_ack), so commands queued
    # for the gateway are redelivered to it, not consumed here. A gateway online right now
    # is disconnected once and reconnects.
    endpoint = policy.Endpoint(
        host=host,
        port=port,
        tls=policy.Tls(
            _local(directory, tls.ca), _local(directory, tls.cert), _local(directory, tls.key)
        ),
        username=cfg.uplink.username,
        password=cfg.uplink.password,
        password_file=password_file,
        client_id=cfg.gateway.id,
        keepalive_s=10,
        clean_start=False,
        session_expiry_s=cfg.uplink.session_expiry_s,
        setting="uplink",
    )
    try:
        client = policy.new_client(endpoint, manual_ack=True)
    except policy.ConnectError as exc:
        result.add(FAIL, "broker", f"{host}:{port}: {exc}")
        return
    done = threading.Event()
    outcome: dict[str, str] = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        outcome["reason"] = policy.explain(reason_code, endpoint)
        outcome["ok"] = "yes" if not reason_code.is_failure else ""
        done.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        outcome.setdefault("reason", f"disconnected: {policy.explain(reason_code, endpoint)}")
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    where = f"{host}:{port}"
    try:
        policy.connect(client, endpoint)
    except ssl.SSLCertVerificationError as exc:
        result.add(
            FAIL,
            "broker",
            f"{where}: the broker's certificate is not trusted by the "
            f"bundle's CA or does not name {host!r} ({exc.verify_message})",
        )
        return
    except (ssl.SSLError, OSError) as exc:
        result.add(
            FAIL,
            "broker",
            f"{where}: TLS handshake refused ({exc}); a revoked or foreign client certificate?"
            if isinstance(exc, ssl.SSLError)
            else policy.explain_error(exc, endpoint),
        )
        return
    client.loop_start()
    try:
        if not done.wait(timeout):
            result.add(FAIL, "broker", f"{where}: no CONNACK within {timeout} s")
        elif outcome.get("ok"):
            result.add(OK, "broker", f"{where}: MQTT v5 over TLS accepted this identity")
        else:
            result.add(
                FAIL,
                "broker",
                f"{where}: refused: {outcome.get('reason')} (revoked, "
                "unknown, or not allowed by the broker's password file)",
            )
    finally:
        client.disconnect()
        client.loop_stop()
