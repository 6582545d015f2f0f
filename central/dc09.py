"""Hand-over to an existing alarm receiving centre (ARC) over SIA DC-09 (ANSI/SIA DC-09-2013).

Besides the webhook, the operations center forwards fire alarms and faults to the city's
monitoring desk in the IP reporting protocol alarm receiving centres already speak (EN 50136-1's
world): one SIA DC-09 frame per event, AES-encrypted when a key is configured, each acknowledged
by the receiver before the next is sent. Events come in as plain values (`Dc09Forwarder.submit`);
this module never imports the central store: the caller records the outcome (`on_result`).

Frame (DC-09 § 5.5.1)::

    LF crc(4 hex, CRC-16/ARC) 0LLL(length, 3 hex) "SIA-DCS"|"*SIA-DCS" seq(4 digits)
       [Rrcvr] Lpref #acct [ #acct|N tiHH:MM/ code zone ] [I text] _HH:MM:SS,MM-DD-YYYY CR

The timestamp is the *transmission* time in UTC (receivers reject stale ones: it is the replay
guard), so every retry is encoded afresh; the event's own time travels as the DC-04 `ti`
modifier (HH:MM, UTC). Encrypted (DC-09 § 5.4): AES-CBC with an all-zero IV over
pad + "|" + data + xdata + timestamp, hex-encoded; the pad is 1-16 random characters (16 when the
rest is already a multiple of 16) that are never "|", "[" or "]". We draw the pad from printable
ASCII (a subset of what § 5.4.4.2 allows) so a lax receiver that decodes text cannot stumble.

Event codes (SIA DC-04), by the `kind` handed to `submit`:

    alarm          FA  Fire Alarm (fire condition detected)
    alarm (code "test"), test
                   RX  Manual Test (an operator's test alarm is a manual test report)
    alarm_restore  FH  Fire Alarm Restore (the alarm condition was eliminated)
    fault          FT  Fire Trouble
    fault_restore  FJ  Fire Trouble Restore
    comm_trouble   YS  Communications Trouble (a gateway fell silent or offline)
    comm_restore   YK  Communications Restoral
    (link test)    "NULL" message, no code (DC-09 § 5.5.2.1), every `link_test_s` when idle

`codes=` overrides the table for a desk that wants others (e.g. FR for every restore).

Delivery: stop-and-wait, first in first out (a restore never overtakes its alarm). A message is
sent again with the same sequence number (DC-09 § 5.5.1.5) after a NAK, a DUH, a lost connection
or no acceptable ACK within `ack_timeout_s` (a reply whose CRC, length, sequence, account or
encryption does not check out is ignored), waiting with the one backoff (protocol/retry.py). It
stays at the head of the queue until acknowledged: after `fail_after` tries it is reported
failed (log, counter, `on_result`) and still retried. Only a message the receiver answers with
DUH ("cannot process") `duh_limit` times is set aside (`rejected()`, logged and reported), so
that one message the desk cannot take does not hold back every fire alarm behind it. A full
queue refuses the event with an error log and a counter: nothing is dropped silently. The queue
lives in memory: the caller's store is the durable copy (after a restart, resubmit what
`on_result` never confirmed).

A NAK carries the receiver's clock (§ 5.5.3.2: the answer to a message that fails the
receiver's timestamp test; pysiaalarm also NAKs what it cannot decrypt). When it differs from
ours by more than `skew_tolerance_s`, the skew is logged as an error and our timestamps are
corrected by it, so the next try is accepted while someone fixes this host's NTP.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import string
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol.retry import Backoff

log = logging.getLogger("wardgate.dc09")

__all__ = [
    "SIA_CODES",
    "Dc09Error",
    "Dc09Forwarder",
    "Reply",
    "build_message",
    "crc16",
    "frame",
    "parse_key",
    "parse_reply",
    "read_key_file",
    "sia_data",
]

SIA_CODES: dict[str, str] = {
    "alarm": "FA",
    "test": "RX",
    "alarm_restore": "FH",
    "fault": "FT",
    "fault_restore": "FJ",
    "comm_trouble": "YS",
    "comm_restore": "YK",
}

_IV = bytes(16)  # DC-09 § 5.4.6: CBC with an all-zero initialisation vector
_PAD_CHARS = "".join(c for c in string.digits + string.ascii_letters + "!#$%&*+-./:;<=>?@_")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_TS_FORMAT = "%H:%M:%S,%m-%d-%Y"


class Dc09Error(ValueError):
    """A DC-09 setting or frame that cannot be used; the message says which and why."""


# --- CRC and framing ----------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/ARC (poly 0x8005 reflected, init 0), the CRC DC-09 § 5.5.1.2 specifies.

    Sixteen lines of table code, not a dependency: no maintained package does only this.
    """
    crc = 0
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def frame(body: str) -> bytes:
    """LF + CRC + 0LLL + body + CR: the body runs from the opening quote of the ID token."""
    raw = body.encode("ascii")
    if len(raw) > 0xFFF:
        raise Dc09Error(f"DC-09 message of {len(raw)} bytes: the length field holds at most 4095")
    return b"\n%04X0%03X" % (crc16(raw), len(raw)) + raw + b"\r"


def _timestamp(unix_s: float) -> str:
    return "_" + time.strftime(_TS_FORMAT, time.gmtime(unix_s))


def _encrypt(key: bytes, plain: str) -> str:
    pad_len = 16 - (len(plain) + 1) % 16  # 1-16; +1: the "|" that ends the pad
    pad = "".join(_PAD_CHARS[b % len(_PAD_CHARS)] for b in os.urandom(pad_len))
    data = (pad + "|" + plain).encode("ascii")
    enc = Cipher(algorithms.AES(key), modes.CBC(_IV)).encryptor()
    return (enc.update(data) + enc.finalize()).hex().upper()


def _decrypt(key: bytes, hex_text: str) -> str:
    try:
        data = bytes.fromhex(hex_text)
    except ValueError as exc:
        raise Dc09Error("encrypted part is not hex") from exc
    if not data or len(data) % 16:
        raise Dc09Error(f"encrypted part of {len(data)} bytes is not a multiple of 16")
    dec = Cipher(algorithms.AES(key), modes.CBC(_IV)).decryptor()
    plain = (dec.update(data) + dec.finalize()).decode("latin-1")
    # strip the pad: DC-09 ends it with "|"; some receivers (pysiaalarm) pad with "0"s and no "|"
    m = re.search(r"[|\[\]]", plain)
    if m is None:
        raise Dc09Error("decrypted text has no data part (wrong key?)")
    return plain[m.end() :] if m.group() == "|" else plain[m.start() :]


# --- messages -----------------------------------------------------------------------------------


def _ascii_text(text: str, limit: int = 200) -> str:
    """Text a DC-09 receiver can take: ASCII, no brackets/bars/carets/controls, bounded."""
    flat = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    flat = "".join(c if c.isprintable() and c not in "[]|^" else " " for c in flat)
    return " ".join(flat.split())[:limit]


def sia_data(account: str, code: str, zone: str = "", when_ms: int | None = None) -> str:
    """The SIA DC-04 data block without brackets: `#ACCT|N[tiHH:MM/]CODEzone`."""
    ti = ""
    if when_ms is not None:
        ti = "ti" + time.strftime("%H:%M", time.gmtime(when_ms / 1000)) + "/"
    return f"#{account}|N{ti}{code}{zone}"


def build_message(
    *,
    seq: int,
    account: str,
    data: str | None,
    sent_s: float,
    key: bytes | None = None,
    receiver: str | None = None,
    line: str = "0",
    xdata: tuple[str, ...] = (),
) -> bytes:
    """One DC-09 frame. `data` None makes a NULL (link test) message."""
    token = "NULL" if data is None else "SIA-DCS"
    if key is not None:
        token = "*" + token
    head = f'"{token}"{seq:04d}{"R" + receiver if receiver else ""}L{line}#{account}['
    tail = ("" if data is None else data) + "]" + "".join(f"[{x}]" for x in xdata)
    tail += _timestamp(sent_s)
    return frame(head + (_encrypt(key, tail) if key is not None else tail))


@dataclass(frozen=True)
class Reply:
    """A receiver's answer, checked (CRC, length) and decrypted."""

    token: str  # ACK, NAK, DUH or RSP
    encrypted: bool
    seq: int
    account: str | None
    data: str
    timestamp: datetime | None


_REPLY = re.compile(
    r'(?P<crc>[0-9A-Fa-f]{4})(?P<length>[0-9A-Fa-f]{4})(?P<body>"(?P<enc>\*)?'
    r'(?P<token>ACK|NAK|DUH|RSP)"(?P<seq>\d{4})[^\[#]*(?:#(?P<account>[0-9A-Fa-f]{3,16}))?'
    r"\[(?P<rest>.*))",
    re.S,
)
_REST = re.compile(
    r"(?P<data>[^\]]*)\](?:\[[^\]]*\])*(?:_(?P<ts>\d\d:\d\d:\d\d,\d\d-\d\d-\d{4}))?", re.S
)


def parse_reply(raw: bytes, key: bytes | None) -> Reply:
    """Parse and check one reply frame (LF/CR already stripped or not); Dc09Error if it is bad."""
    text = raw.strip(b"\r\n").decode("latin-1")
    m = _REPLY.fullmatch(text)
    if m is None:
        raise Dc09Error(f"not a DC-09 reply: {text[:60]!r}")
    body = m["body"].encode("latin-1")
    if int(m["crc"], 16) != crc16(body):
        raise Dc09Error(f"reply CRC {m['crc']} does not match {crc16(body):04X}")
    if int(m["length"], 16) != len(body):
        raise Dc09Error(f"reply length {m['length']} does not match {len(body)} bytes")
    encrypted = bool(m["enc"])
    rest = m["rest"]
    if encrypted:
        if key is None:
            raise Dc09Error("encrypted reply, but no key is configured")
        rest = _decrypt(key, rest.strip())
    r = _REST.fullmatch(rest)
    if r is None:
        raise Dc09Error(f"reply data does not parse{' (wrong key?)' if encrypted else ''}")
    stamp = None
    if r["ts"]:
        try:
            stamp = datetime.strptime(r["ts"], _TS_FORMAT).replace(tzinfo=UTC)
        except ValueError as exc:
            raise Dc09Error(f"reply timestamp {r['ts']!r}: {exc}") from exc
    account = m["account"].upper() if m["account"] else None
    return Reply(m["token"], encrypted, int(m["seq"]), account, r["data"], stamp)


# --- keys ---------------------------------------------------------------------------------------


def parse_key(key_hex: str, where: str = "DC-09 key") -> bytes:
    """AES key from hex: 32, 48 or 64 hex digits (AES-128, -192, -256)."""
    text = key_hex.strip()
    if not _HEX.fullmatch(text or "-") or len(text) not in (32, 48, 64):
        raise Dc09Error(
            f"{where}: need 32, 48 or 64 hex digits (AES-128/192/256), got {len(text)} "
            "characters" + ("" if _HEX.fullmatch(text or "-") else " that are not all hex")
        )
    return bytes.fromhex(text)


def read_key_file(path: Path) -> str:
    """The key's hex digits from a file (e.g. `--dc09-key-file`), checked; 0600 expected."""
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode & 0o077
    except (OSError, UnicodeDecodeError) as exc:
        raise Dc09Error(f"{path}: cannot read the DC-09 key: {exc}") from exc
    if mode:
        log.warning("%s: the DC-09 key is readable by others (chmod 600 it)", path)
    return parse_key(text, where=str(path)).hex().upper()


# --- the forwarder ------------------------------------------------------------------------------


@dataclass
class _Item:
    kind: str
    code: str
    zone: str
    text: str
    when_ms: int | None
    event_id: str
    seq: int = 0
    tries: int = 0
    duhs: int = 0
    submitted_s: float = field(default_factory=time.time)


class _Link:
    """One TCP connection or one connected UDP socket to the receiver; frames end with CR."""

    def __init__(self, sock: socket.socket, udp: bool) -> None:
        self.sock = sock
        self.udp = udp
        self.buf = b""
        self.used = False  # a frame went out on it already (a reused TCP link may be stale)

    def send(self, data: bytes) -> None:
        if self.udp:
            self.sock.send(data)
        else:
            self.sock.sendall(data)
        self.used = True

    def recv_frame(self, deadline: float, stop: threading.Event) -> bytes | None:
        """The next frame, None at the deadline; ConnectionError when the receiver hung up."""
        while not stop.is_set():
            if not self.udp and b"\r" in self.buf:
                frame_, _, self.buf = self.buf.partition(b"\r")
                return frame_.lstrip(b"\n")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 0.25))  # short slices: stop() is never kept waiting
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            if self.udp:
                return chunk.strip(b"\r\n")
            if not chunk:
                raise ConnectionError("the receiver closed the connection")
            self.buf += chunk
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Dc09Forwarder:
    """Forwards events to one DC-09 receiver: `start()`, `submit(...)`, `status()`, `stop()`.

    `account`: 3-16 hex digits. `key_hex`: 32/48/64 hex digits, or None for unencrypted.
    `receiver` (the R field, 1-6 hex digits, optional) and `line` (the L field, DC-09's account
    prefix, 1-6 hex digits, default "0") are what the desk assigned. `on_result(event_id,
    outcome)` is called from the worker thread with "acked", "failed" (still retried) or
    "rejected" (set aside after repeated DUH).
    """

    def __init__(
        self,
        host: str,
        port: int,
        account: str,
        key_hex: str | None = None,
        receiver: str | None = None,
        line: str | None = None,
        *,
        udp: bool = False,
        codes: dict[str, str] | None = None,
        max_queue: int = 10_000,
        ack_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        fail_after: int = 3,
        duh_limit: int = 3,
        link_test_s: float | None = None,
        skew_tolerance_s: float = 20.0,
        on_result: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host, self.port, self.udp = host, int(port), udp
        self.account = _hex_field(account, "account", 3, 16)
        self.receiver = _hex_field(receiver, "receiver", 1, 6) if receiver else None
        self.line = _hex_field(line, "line", 1, 6) if line else "0"
        self.key = parse_key(key_hex) if key_hex else None
        self.codes = {**SIA_CODES, **(codes or {})}
        for kind, sia in self.codes.items():
            if not re.fullmatch(r"[A-Z]{2}", sia):
                raise Dc09Error(f"DC-09 code for {kind!r}: {sia!r} is not two capital letters")
        self.max_queue = max_queue
        self.ack_timeout_s = ack_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff = Backoff(backoff_initial_s, backoff_cap_s)
        self.fail_after = fail_after
        self.duh_limit = duh_limit
        self.link_test_s = link_test_s
        self.skew_tolerance_s = skew_tolerance_s
        self.on_result = on_result
        self.clock = clock
        self.offset_s = 0.0  # added to `clock` after a NAK showed our clock is off
        self.counts = dict.fromkeys(
            (
                "submitted",
                "refused",
                "sent",
                "acked",
                "retried",
                "failed",
                "rejected",
                "naks",
                "duhs",
                "timeouts",
                "bad_replies",
                "connect_errors",
                "clock_skew",
                "link_tests",
            ),
            0,
        )
        self.state = "stopped"  # stopped|idle|connecting|waiting_ack|retrying|link_down
        self.last_error: str | None = None
        self.last_ack_ms: int | None = None
        self._queue: deque[_Item] = deque()
        self._rejected: list[_Item] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: _Link | None = None
        self._seq = 0
        self._last_traffic = time.monotonic()

    # --- API -------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self.state = "idle"
        self._thread = threading.Thread(target=self._run, name="dc09", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker (within about a quarter second plus any connect under way)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._drop_link()
        self.state = "stopped"

    def submit(
        self,
        kind: str,
        code: str | None,
        zone_or_text: int | str | None,
        when_ms: int | None,
        event_id: str,
        *,
        text: str | None = None,
    ) -> bool:
        """Queue one event; False (and an error log) when the queue is full.

        `kind`: a key of the code table (alarm, test, alarm_restore, fault, fault_restore,
        comm_trouble, comm_restore); an alarm whose `code` (the event's cause) is "test" goes as
        a test report. `code`: the event's cause or fault code, sent in the alarm text so the
        desk sees why. `zone_or_text`: a zone number (digits) or a text such as the site and
        sensor. `text`: more text when a zone is given.
        """
        if kind == "alarm" and code == "test":
            kind = "test"
        if kind not in self.codes:
            raise Dc09Error(f"DC-09: unknown kind {kind!r}; one of {', '.join(self.codes)}")
        zone, words = "", [code or "", text or ""]
        if isinstance(zone_or_text, int) or (
            isinstance(zone_or_text, str) and zone_or_text.isdigit()
        ):
            zone = str(int(zone_or_text))
            if len(zone) > 6:
                raise Dc09Error(f"DC-09: zone {zone} has more than 6 digits")
        elif zone_or_text:
            words.insert(1, zone_or_text)
        item = _Item(
            kind,
            self.codes[kind],
            zone,
            _ascii_text(" ".join(w for w in words if w)),
            when_ms,
            event_id,
        )
        with self._cond:
            if len(self._queue) >= self.max_queue:
                self.counts["refused"] += 1
                log.error(
                    "DC-09 queue full (%d): event %s (%s) NOT handed over to %s",
                    self.max_queue,
                    event_id,
                    kind,
                    self.peer,
                )
                return False
            self._queue.append(item)
            self.counts["submitted"] += 1
            self._cond.notify_all()
        return True

    @property
    def peer(self) -> str:
        return f"{'udp' if self.udp else 'tcp'}://{self.host}:{self.port}"

    def pending(self) -> list[str]:
        """Event ids not yet acknowledged, oldest first (the head is the one being sent)."""
        with self._cond:
            return [i.event_id for i in self._queue]

    def rejected(self) -> list[str]:
        """Event ids the receiver refused (DUH) `duh_limit` times, set aside."""
        with self._cond:
            return [i.event_id for i in self._rejected]

    def status(self) -> dict:
        """A snapshot for the console."""
        with self._cond:
            return {
                "peer": self.peer,
                "account": self.account,
                "encrypted": self.key is not None,
                "state": self.state,
                "queued": len(self._queue),
                "rejected": len(self._rejected),
                "last_error": self.last_error,
                "last_ack_ms": self.last_ack_ms,
                "clock_offset_s": self.offset_s,
                **{f"n_{k}": v for k, v in self.counts.items()},
            }

    # --- the worker ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                item = self._queue[0] if self._queue else None
                if item is None:
                    due = self._link_test_due()
                    if due > 0:
                        self._cond.wait(due)
                        continue
            try:
                if item is None:
                    self._link_test()
                else:
                    self._deliver(item)
            except Exception:  # a bug must not end the hand-over silently
                log.exception("DC-09 worker error; going on")
                self._drop_link()
                self._stop.wait(self.backoff.next())

    def _link_test_due(self) -> float:
        """Seconds until the next link test, or a long wait when none is configured."""
        if not self.link_test_s:
            return 3600.0
        return self._last_traffic + self.link_test_s - time.monotonic()

    def _link_test(self) -> None:
        self.counts["link_tests"] += 1
        self._seq = self._seq % 9999 + 1
        outcome = self._exchange(self._seq, None, ())
        if self._stop.is_set():
            return
        self.state = "idle" if outcome == "ack" else "link_down"
        if outcome != "ack":
            log.warning("DC-09 link test to %s failed: %s", self.peer, self.last_error)
            self._last_traffic = time.monotonic()  # the next one after another interval

    def _deliver(self, item: _Item) -> None:
        if item.seq == 0:
            self._seq = self._seq % 9999 + 1
            item.seq = self._seq
        data = sia_data(self.account, item.code, item.zone, item.when_ms)
        xdata = (f"I{item.text}",) if item.text else ()
        outcome = self._exchange(item.seq, data, xdata)
        if self._stop.is_set() and outcome != "ack":
            return
        if outcome == "ack":
            with self._cond:
                self._queue.popleft()
            self.counts["acked"] += 1
            self.last_ack_ms = int(time.time() * 1000)
            self.backoff.reset()
            self.state = "idle"
            log.info(
                "DC-09 %s %s (event %s) acknowledged by %s",
                item.code,
                item.kind,
                item.event_id,
                self.peer,
            )
            self._report(item.event_id, "acked")
            return
        item.tries += 1
        self.counts["retried"] += 1
        self.state = "retrying"
        if outcome == "duh":
            item.duhs += 1
            if item.duhs >= self.duh_limit:
                with self._cond:
                    self._queue.popleft()
                    self._rejected.append(item)
                self.counts["rejected"] += 1
                log.error(
                    "DC-09 receiver %s cannot process %s %s (event %s): refused %d times; set "
                    "aside, the queue goes on",
                    self.peer,
                    item.code,
                    item.kind,
                    item.event_id,
                    item.duhs,
                )
                self._report(item.event_id, "rejected")
                return
        if item.tries == self.fail_after:
            self.counts["failed"] += 1
            log.error(
                "DC-09 hand-over of %s %s (event %s) to %s failed %d times (%s); kept, retrying",
                item.code,
                item.kind,
                item.event_id,
                self.peer,
                item.tries,
                self.last_error,
            )
            self._report(item.event_id, "failed")
        self._stop.wait(self.backoff.next())

    def _report(self, event_id: str, outcome: str) -> None:
        if self.on_result is None:
            return
        try:
            self.on_result(event_id, outcome)
        except Exception:
            log.exception("DC-09 on_result callback failed for %s", event_id)

    def _exchange(self, seq: int, data: str | None, xdata: tuple[str, ...]) -> str:
        """Send one message and wait for its answer: ack, nak, duh, timeout or error."""
        for fresh_try in (False, True):
            reused = self._link is not None and self._link.used
            try:
                link = self._connect()
                message = build_message(
                    seq=seq,
                    account=self.account,
                    data=data,
                    sent_s=self.clock() + self.offset_s,
                    key=self.key,
                    receiver=self.receiver,
                    line=self.line,
                    xdata=xdata,
                )
                link.send(message)
                self.counts["sent"] += 1
                self._last_traffic = time.monotonic()
                self.state = "waiting_ack"
                return self._await_reply(link, seq)
            except (ConnectionError, OSError) as exc:
                self._drop_link()
                self.last_error = f"{type(exc).__name__}: {exc}"
                if reused and not fresh_try and isinstance(exc, ConnectionError):
                    continue  # the receiver had closed an idle connection: once more, new one
                self.counts["connect_errors"] += 1
                log.warning("DC-09 receiver %s: %s", self.peer, self.last_error)
                return "error"
        return "error"

    def _connect(self) -> _Link:
        if self._link is not None:
            return self._link
        self.state = "connecting"
        if self.udp:
            family, kind, proto, _, addr = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.connect(addr)
        else:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._link = _Link(sock, self.udp)
        return self._link

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _await_reply(self, link: _Link, seq: int) -> str:
        deadline = time.monotonic() + self.ack_timeout_s
        while True:
            raw = link.recv_frame(deadline, self._stop)
            if raw is None:
                if not self._stop.is_set():
                    self.counts["timeouts"] += 1
                    self.last_error = f"no answer within {self.ack_timeout_s:g} s"
                    log.warning("DC-09 receiver %s: %s", self.peer, self.last_error)
                self._drop_link()  # a late answer must not be read as the next one's
                return "timeout"
            if not raw.strip():
                # pysiaalarm answers a frame it could not check (CRC) with an empty one
                self.counts["bad_replies"] += 1
                self.last_error = "empty reply: the receiver could not read the message"
                log.warning("DC-09 receiver %s: %s", self.peer, self.last_error)
                return "error"
            try:
                reply = parse_reply(raw, self.key)
            except Dc09Error as exc:
                self.counts["bad_replies"] += 1
                self.last_error = f"unusable reply: {exc}"
                log.warning("DC-09 receiver %s: %s", self.peer, self.last_error)
                continue  # not an answer we can trust: wait on until the deadline
            if reply.token == "NAK":  # sequence 0000, never encrypted (§ 5.5.3.2)
                self.counts["naks"] += 1
                self._on_nak(reply)
                return "nak"
            if reply.seq != seq or (reply.account and reply.account != self.account):
                self.counts["bad_replies"] += 1
                log.warning(
                    "DC-09 receiver %s: reply for sequence %04d account %s while waiting for "
                    "%04d account %s; ignored",
                    self.peer,
                    reply.seq,
                    reply.account,
                    seq,
                    self.account,
                )
                continue
            if reply.token == "DUH":
                self.counts["duhs"] += 1
                self.last_error = "DUH: the receiver cannot process the message"
                log.warning(
                    "DC-09 receiver %s: %s (sequence %04d)", self.peer, self.last_error, seq
                )
                return "duh"
            if reply.encrypted != (self.key is not None):
                self.counts["bad_replies"] += 1
                self.last_error = (
                    "unencrypted ACK to an encrypted message (not from a receiver holding the key)"
                    if self.key
                    else "encrypted ACK to an unencrypted message"
                )
                log.warning("DC-09 receiver %s: %s; ignored", self.peer, self.last_error)
                continue
            self._check_ack_time(reply)
            self.last_error = None
            return "ack"

    def _on_nak(self, reply: Reply) -> None:
        ours = self.clock() + self.offset_s
        if reply.timestamp is not None:
            skew = reply.timestamp.timestamp() - ours
            if abs(skew) > self.skew_tolerance_s:
                self.counts["clock_skew"] += 1
                self.offset_s += skew
                self.last_error = f"NAK: clock skew of {skew:+.0f} s against the receiver"
                log.error(
                    "DC-09 receiver %s: %s; our timestamps now carry its time (offset %+.0f s): "
                    "fix this host's clock (NTP)",
                    self.peer,
                    self.last_error,
                    self.offset_s,
                )
                return
        self.last_error = (
            "NAK: the receiver refused the message (wrong key, unknown account or a format "
            "it does not take)"
        )
        log.warning("DC-09 receiver %s: %s", self.peer, self.last_error)

    def _check_ack_time(self, reply: Reply) -> None:
        if reply.timestamp is None:
            return
        skew = reply.timestamp.timestamp() - (self.clock() + self.offset_s)
        if abs(skew) > 60:
            log.warning("DC-09 receiver %s: its ACK is timed %+.0f s from ours", self.peer, skew)


def _hex_field(value: str, name: str, lo: int, hi: int) -> str:
    text = str(value).strip().upper()
    if not (lo <= len(text) <= hi and _HEX.fullmatch(text)):
        raise Dc09Error(f"DC-09 {name} {value!r}: need {lo}-{hi} hex digits")
    return text
