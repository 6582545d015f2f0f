"""The one MQTT connection policy (issue 14): every wardgate client connects through here.

The gateway uplink (edge/uplink/mqtt.py), the operations center's ingest (central/ingest.py), the
demo's operator view, `provision verify`'s live check and the test clients all take an
`Endpoint` and get their paho client from `new_client`:

- paho 2 callbacks (CallbackAPIVersion.VERSION2), MQTT v5, CONNECT properties (session expiry);
- TLS from `ssl.create_default_context` with TLS 1.2 at least, an optional client certificate and
  an optional server name to verify instead of the host;
- username with a password or a password file, the file read on every connection attempt: a
  secret missing now is a `ConnectError` that says which setting to fix, not a crash, and
  putting it back is enough;
- TCP_NODELAY on every socket;
- no paho auto-reconnect: a caller owns its reconnects, with the one backoff
  (protocol/retry.py). The uplink makes one client per connection (its own loop); long-lived
  clients (receivers, views, tests) use `Connection`, which reconnects one client;
- `explain` for CONNACK/DISCONNECT reason codes and `explain_error` for TLS and socket errors,
  so every client logs the same hint for the same cause.

paho is imported here and only here: `protocol/__init__.py`, `protocol.events` and
`protocol.topics` never import this module (a decoder-only install has no paho).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.retry import Backoff

log = logging.getLogger("wardgate.mqtt")

__all__ = [
    "ConnectError",
    "Connection",
    "Endpoint",
    "Tls",
    "explain",
    "explain_error",
    "new_client",
    "no_delay",
    "read_password",
    "tls_context",
]


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # the name the broker's certificate must carry (else: host)


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect; one per client (the policy is the same for all)."""

    host: str = "localhost"
    port: int = 1883
    tls: Tls | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None  # wins over `password`; read on every attempt
    client_id: str = ""  # "" = paho makes one up (only for throwaway clients)
    keepalive_s: int = 60
    clean_start: bool = True
    session_expiry_s: int | None = None  # CONNECT's Session Expiry Interval; None = not sent
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # how messages name the settings: "uplink" -> "uplink.password_file", "uplink.tls.ca";
    # `names` overrides single ones (a command line: {"password_file": "--password-file"})
    setting: str = "mqtt"
    names: Mapping[str, str] = field(default_factory=dict)

    def name(self, key: str) -> str:
        return self.names.get(key) or f"{self.setting}.{key}"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def connect_properties(self) -> Properties | None:
        if self.session_expiry_s is None:
            return None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        return props

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_initial_s, self.backoff_max_s)


class ConnectError(Exception):
    """Our own configuration stops the connection (not the network): the message says what to
    fix."""


class _NamedContext(ssl.SSLContext):
    """A context that verifies (and sends as SNI) a fixed server name: paho passes its host."""

    server_name: str | None = None

    def wrap_socket(self, sock, *args, server_hostname=None, **kwargs):  # type: ignore[override]
        return super().wrap_socket(
            sock, *args, server_hostname=self.server_name or server_hostname, **kwargs
        )


def tls_context(tls: Tls) -> ssl.SSLContext:
    """The client TLS context: the system's defaults (hostname check, CERT_REQUIRED), our CA,
    TLS 1.2 at least, and the client certificate if there is one. Raises OSError/ssl.SSLError
    for files that are missing or unreadable."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is not None:
        ctx.load_cert_chain(str(tls.cert), str(tls.key) if tls.key is not None else None)
    if tls.server_name:
        ctx.__class__ = _NamedContext  # same object, same settings; only wrap_socket differs
        ctx.server_name = tls.server_name  # type: ignore[attr-defined]
    return ctx


def read_password(endpoint: Endpoint) -> str | None:
    """The password: the file's content (stripped) if there is a file, else `password`."""
    if endpoint.password_file is not None:
        return endpoint.password_file.read_text(encoding="utf-8").strip()
    return endpoint.password


def apply_credentials(client: mqtt.Client, endpoint: Endpoint) -> None:
    """Set username and password for the next CONNECT (the password file read now)."""
    if not endpoint.username:
        return
    try:
        password = read_password(endpoint)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConnectError(f"{endpoint.name('password_file')}: cannot read it ({exc})") from None
    client.username_pw_set(endpoint.username, password)


def no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle's algorithm: with small command replies and PUBACKs in flight, an alarm's
    PUBLISH otherwise waits for the broker's delayed ACK (measured: alarm p50 2 -> 25 ms under
    200 commands/s). paho does not set TCP_NODELAY itself."""
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (e.g. a unix socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(
    endpoint: Endpoint,
    *,
    userdata: Any = None,
    manual_ack: bool = False,
    paho_reconnect: bool = False,
    credentials: bool = True,
) -> mqtt.Client:
    """A paho client on the policy; call `connect(client, endpoint)` to connect it.

    Raises ConnectError when the password file or the TLS files cannot be read. paho's own
    reconnect stays off unless `paho_reconnect` (only a test peer that must behave as a bare
    paho client does); its delays are then the endpoint's backoff bounds. `credentials=False`
    leaves username and password to `apply_credentials` before each CONNECT."""
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=endpoint.client_id,
        protocol=mqtt.MQTTv5,
        userdata=userdata,
        reconnect_on_failure=paho_reconnect,
        manual_ack=manual_ack,
    )
    if paho_reconnect:
        client.reconnect_delay_set(
            max(1, round(endpoint.backoff_initial_s)), max(1, round(endpoint.backoff_max_s))
        )
    if credentials:
        apply_credentials(client, endpoint)
    if endpoint.tls is not None:
        try:
            client.tls_set_context(tls_context(endpoint.tls))
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(
                f"{endpoint.name('tls')}: cannot load the CA, certificate or key ({exc}); "
                "check the paths and their permissions"
            ) from None
    client.on_socket_open = no_delay
    return client


def connect(client: mqtt.Client, endpoint: Endpoint) -> None:
    """CONNECT with the endpoint's keepalive, clean start and session expiry (blocking TCP and
    TLS; the CONNACK arrives in the network loop)."""
    client.connect(
        endpoint.host,
        endpoint.port,
        keepalive=endpoint.keepalive_s,
        clean_start=endpoint.clean_start,
        properties=endpoint.connect_properties(),
    )


# --- explanations ------------------------------------------------------------------------------

_CREDENTIALS = (0x86, 0x87, 0x8C)
_HINTS: dict[int, str] = {
    0x80: "the broker failed without saying why; see its log",
    0x81: "the broker could not parse a packet (a client or broker bug)",
    0x82: "protocol error (a client or broker bug, or not an MQTT v5 broker)",
    0x84: "the broker does not speak MQTT v5",
    0x85: "the broker refuses this client id",
    0x88: "the broker is up but not accepting clients now (retrying)",
    0x89: "the broker is busy (retrying)",
    0x8A: "this account is banned by the broker",
    0x8B: "the broker is shutting down (retrying)",
    0x8D: "keepalive timeout: the broker heard nothing within 1.5 x keepalive (network stall?)",
    0x8E: "session taken over: another client connected with this account/client id",
    0x90: "the topic name is not valid",
    0x93: "receive maximum exceeded (too many unacknowledged publishes)",
    0x95: "packet too large for the broker's maximum packet size",
    0x97: "quota exceeded",
    0x98: "disconnected by an administrator",
    0x9C: "the broker asks to use another server",
    0x9D: "the broker has moved",
    0x9F: "connection rate exceeded (retrying)",
}


def explain(reason_code: Any, endpoint: Endpoint | None = None) -> str:
    """'<paho's name> (0x86): <what to check>' for a CONNACK or DISCONNECT reason code."""
    value = getattr(reason_code, "value", reason_code)
    text = str(reason_code) if not isinstance(reason_code, int) else f"reason code {value}"
    if not isinstance(value, int):
        return text
    if value in _CREDENTIALS:
        if endpoint is not None:
            hint = (
                f"check {endpoint.name('username')} and {endpoint.name('password')} / "
                "password_file, or the client certificate"
            )
        else:
            hint = "check username/password/password_file or the client certificate"
        if value == 0x87:
            hint = f"not authorized: {hint}"
    else:
        hint = _HINTS.get(value, "")
    return f"{text} (0x{value:02X})" + (f": {hint}" if hint else "")


def explain_disconnect(flags: Any, reason_code: Any, endpoint: Endpoint | None = None) -> str:
    """Like `explain`, for an on_disconnect: without a DISCONNECT from the broker, paho reports
    a lost connection as 0x80 and its own keepalive timeout as 0x8D, and those are not the
    broker's words: say what happened instead of blaming the broker."""
    if getattr(flags, "is_disconnect_packet_from_server", True):
        return explain(reason_code, endpoint)
    value = getattr(reason_code, "value", reason_code)
    if value == 0x8D:
        return "no answer from the broker within the keepalive (network stall or broker hung)"
    if value == 0x80:
        return "connection lost (the broker stopped or restarted, or the network broke)"
    return explain(reason_code, endpoint)


def explain_error(exc: BaseException, endpoint: Endpoint) -> str:
    """One line for a failed connection attempt (TLS, socket, our own files)."""
    where = endpoint.where
    if isinstance(exc, ConnectError):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the broker's certificate is not trusted by {endpoint.name('tls.ca')} "
            f"({exc.verify_message}); check the CA file and the broker name"
        )
    if isinstance(exc, ssl.SSLError):
        reason = (getattr(exc, "reason", "") or "").upper()
        hint = ""
        if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason or "REVOKED" in reason:
            hint = " (the broker refused our client certificate: revoked, expired or foreign?)"
        return f"TLS handshake with {where} failed: {exc}{hint}"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot reach broker {where}: {exc} (nothing listens there: broker down?)"
    if isinstance(exc, OSError):
        return f"cannot reach broker {where}: {exc}"
    return f"unexpected MQTT error: {exc!r}"


def log_reason(logger: logging.Logger, what: str, reason_code: Any, endpoint: Endpoint) -> None:
    """The one way to log a refused CONNACK or a DISCONNECT: warning with its hint."""
    logger.warning("%s: %s", what, explain(reason_code, endpoint))


# --- a long-lived client --------------------------------------------------------------------------

Callback = Callable[..., None]


class Connection:
    """One paho client that stays connected: connects on `start()`, and after every failed
    attempt or lost connection waits the endpoint's backoff (reset after a CONNACK) and
    connects again, reading the password file again. For receivers, operator views and test
    watchers: paho keeps unacknowledged QoS 1 messages across the reconnects of one client.

    Each connection runs paho's own network thread (loop_start), so publishes from other
    threads are written by that thread. Set on_message/on_subscribe/on_publish on `.client`;
    pass on_connect/on_disconnect here (they are called after the policy's own handling)."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        on_connect: Callback | None = None,
        on_disconnect: Callback | None = None,
        manual_ack: bool = False,
        logger: logging.Logger | None = None,
        name: str = "mqtt",
    ) -> None:
        self.endpoint = endpoint
        self.log = logger or log
        self.name = name
        self.user_on_connect = on_connect
        self.user_on_disconnect = on_disconnect
        # TLS files are read here (a bad path fails at once); the password on every attempt
        self.client = new_client(endpoint, manual_ack=manual_ack, credentials=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.connected = threading.Event()
        self.last_error = ""
        self.delays: list[float] = []  # the waits so far (tests read them)
        self._stop = threading.Event()
        self._down = threading.Event()
        self._ok = False
        self._thread: threading.Thread | None = None

    def start(self) -> Connection:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-conn", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._down.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._error(f"{self.name}: broker refused the connection: "
                        f"{explain(reason_code, self.endpoint)}")  # fmt: skip
        else:
            self._ok = True
            self.last_error = ""
            self.connected.set()
        if self.user_on_connect is not None:
            self.user_on_connect(client, userdata, flags, reason_code, properties)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self._down.set()
        if self.user_on_disconnect is not None:
            self.user_on_disconnect(client, userdata, flags, reason_code, properties)

    def _error(self, message: str) -> None:
        if message != self.last_error:
            self.log.error("%s", message)
        else:
            self.log.debug("%s", message)
        self.last_error = message

    def _run(self) -> None:
        ep = self.endpoint
        delays = ep.backoff()
        while not self._stop.is_set():
            self._down.clear()
            self._ok = False
            try:
                apply_credentials(self.client, ep)  # the password file, read again
                connect(self.client, ep)
                self.client.loop_start()
                try:
                    while not self._down.wait(0.5) and not self._stop.is_set():
                        pass
                finally:
                    if self._stop.is_set():
                        with contextlib.suppress(Exception):
                            self.client.disconnect()
                    self.client.loop_stop()
            except Exception as exc:  # never let the connection thread die
                if not isinstance(exc, ConnectError | OSError):
                    self.log.exception("%s: connection error", self.name)
                self._error(f"{self.name}: {explain_error(exc, ep)}")
            self.connected.clear()
            if self._stop.is_set():
                break
            if self._ok:
                delays.reset()
            delay = delays.next()
            self.delays.append(delay)
            self.log.info("%s: reconnecting to %s in %.1f s", self.name, ep.where, delay)
            self._stop.wait(delay)
