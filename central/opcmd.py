"""`wardgate cmd GATEWAY COMMAND [ARGS]`: an operator's command to one gateway, and its answer.

Runs at the operations center under a per-person operator account (docs/provisioning.md, ACL).
It finds the gateway's district and ward itself, so nobody types topics:

- `--registry FILE`: the fleet's enrollment registry (`registry.sqlite3`, opened read-only) or
  its export `wardgate provision status --csv FILE`. central never imports `provisioning`
  (.importlinter); it reads the registry's `gateways(id, district, ward, status)` columns as a
  file format, pinned by tests/test_opcmd.py against a real provisioned fleet. An unknown or
  revoked gateway is refused before anything connects.
- otherwise the gateway's retained `state` (`<prefix>/+/+/<GATEWAY>/state`, or one district with
  `--district`), read over the same connection that sends the command: the broker forces the
  client id to the account name, so a second connection would replace the first. A gateway the
  account may not read (another district) is as unknown as one that does not exist.

Then it subscribes to the gateway's `cmd/res`, publishes `{"id", "args"}` on `cmd/<name>` at
QoS 1 with MQTT v5 CorrelationData (the gateway echoes both: edge/runtime.py), and waits for the
answer that carries its own correlation data. A publish the broker refuses (PUBACK "Not
authorized": a command outside the account's districts or commands) is reported as such.

Exit status: 0 the gateway answered ok; 1 it answered an error, no answer in time, the broker
refused the credentials or the command, or it is unreachable; 2 usage: an unknown gateway or
command, a registry or password file that is not there.

Cheap to import: paho and the protocol package load inside the handler.
"""

from __future__ import annotations

import argparse
import csv
import json
import queue
import sqlite3
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

#: spellings a person types for the gateway's commands (protocol.topics.GATEWAY_COMMANDS uses
#: underscores for the serial ones: `sensor_reset`)
ALIASES = {"sensor-reset": "sensor_reset", "sensor-silence": "sensor_silence"}
#: commands whose bare words are event sources: `wardgate cmd gw sensor-reset n07 n08`
SOURCES_ARG = {"sensor_reset": "sources", "sensor_silence": "sources", "test-alarm": "source"}
SQLITE_MAGIC = b"SQLite format 3\x00"


class CmdError(Exception):
    """Ends the command with a message on stderr and an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Location:
    district: str
    ward: str
    gateway: str
    online: bool | None = None  # from the retained state; None: from the registry
    origin: str = ""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cmd",
        help="send a command to one gateway and print its answer (operators)",
        description="Send COMMAND to GATEWAY and print its answer (JSON on stdout). District "
        "and ward are looked up in --registry, else in the gateway's retained state.",
        epilog="ARG: KEY=VALUE (VALUE as JSON if it parses, else a string); for sensor-reset/"
        "sensor-silence a bare word is a sensor source (n07), for test-alarm the source. "
        "Exit: 0 answered ok, 1 error answer/timeout/refused, 2 unknown gateway or command.",
    )
    p.add_argument("gateway", metavar="GATEWAY", help="gateway id, e.g. fp-d03-002")
    p.add_argument(
        "command",
        metavar="COMMAND",
        help="ping, status, test-alarm, reload, sensor-reset, sensor-silence",
    )
    p.add_argument("args", nargs="*", metavar="ARG", help="command arguments")
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username", help="your own operator account")
    p.add_argument("--password-file", type=Path, help="file holding the password")
    p.add_argument("--ca", type=Path, help="CA certificate: enables TLS")
    p.add_argument("--cert", type=Path, help="client certificate")
    p.add_argument("--key", type=Path, help="client key")
    p.add_argument("--server-name", help="the name the broker's certificate carries, if not --host")
    p.add_argument("--prefix", default="wg/v1")
    p.add_argument(
        "--registry",
        type=Path,
        help="the fleet's registry.sqlite3, or a `wardgate provision status --csv` export",
    )
    p.add_argument("--district", help="look the gateway's state up in this district only")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    p.add_argument(
        "--lookup-timeout", type=float, default=3.0, help="seconds to wait for retained state"
    )
    p.add_argument("--json", action="store_true", help="the answer as one JSON line")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="send a command name this tool does not know (a fleet's extra_commands)",
    )
    p.set_defaults(func=cmd_main)


def cmd_main(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except CmdError as exc:
        print(f"wardgate cmd: {exc}", file=sys.stderr)
        return exc.status


def run(args: argparse.Namespace) -> int:
    from protocol.topics import check_segment

    for what, value in (("GATEWAY", args.gateway), ("--district", args.district)):
        if value is None:
            continue
        try:
            check_segment(value)
        except ValueError as exc:
            raise CmdError(f"{what}: {exc}", EXIT_USAGE) from None
    name = command_name(args.command, allow_unknown=args.allow_unknown)
    request_args = parse_args(name, args.args)
    location = None
    if args.registry is not None:  # refused before anything connects
        location = locate_in_registry(args.registry, args.gateway)
    session = Session(endpoint(args), args.prefix)
    try:
        session.open()
        if location is None:
            location = session.locate(args.gateway, args.district, args.lookup_timeout)
        where = f"{args.gateway} ({location.district}/{location.ward}, {location.origin})"
        if location.online is False:
            print(f"wardgate cmd: {where} is offline; the command waits in its session until it "
                  f"returns (waiting {args.timeout:g} s)", file=sys.stderr)  # fmt: skip
        started = time.monotonic()
        reply = session.command(location, name, request_args, args.timeout)
        took_ms = (time.monotonic() - started) * 1000
    finally:
        session.close()
    ok = reply.get("ok") is True
    if args.json:
        print(json.dumps(reply, separators=(",", ":"), sort_keys=True))
    else:
        print(json.dumps(reply, indent=2, sort_keys=True))
    verdict = "ok" if ok else f"ERROR: {reply.get('error', 'the gateway answered ok=false')}"
    print(f"wardgate cmd: {where} {name}: {verdict} ({took_ms:.0f} ms)", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILURE


def command_name(given: str, *, allow_unknown: bool = False) -> str:
    """The gateway's name for the command a person typed (`sensor-reset` -> `sensor_reset`)."""
    from protocol.topics import GATEWAY_COMMANDS, check_segment

    name = ALIASES.get(given, given)
    if name in GATEWAY_COMMANDS:
        return name
    known = ", ".join(sorted({*GATEWAY_COMMANDS, *ALIASES} - set(ALIASES.values())))
    if name == "res":
        raise CmdError("'res' is where gateways answer; it is not a command", EXIT_USAGE)
    if allow_unknown:
        try:
            return check_segment(name)
        except ValueError as exc:
            raise CmdError(f"COMMAND: {exc}", EXIT_USAGE) from None
    raise CmdError(
        f"unknown command {given!r}; known: {known} (a fleet's extra_commands: add "
        "--allow-unknown); nothing was sent",
        EXIT_USAGE,
    )


def parse_args(name: str, words: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` words (VALUE as JSON when it parses) and bare source words into `args`."""
    out: dict[str, Any] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
            continue
        target = SOURCES_ARG.get(name)
        if target == "sources":
            out.setdefault("sources", []).append(word)
        elif target == "source" and "source" not in out:
            out["source"] = word
        else:
            raise CmdError(
                f"argument {word!r}: write KEY=VALUE ({name} takes no bare words)", EXIT_USAGE
            )
    return out


# --- where is the gateway ------------------------------------------------------------------------


def locate_in_registry(path: Path, gateway: str) -> Location:
    """The gateway's district and ward from the registry (SQLite) or its CSV export."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise CmdError(f"--registry {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    rows = _sqlite_rows(path) if head == SQLITE_MAGIC else _csv_rows(path)
    exact = [r for r in rows if r["id"] == gateway]
    if not exact:
        near = sorted(r["id"] for r in rows if r["id"].lower() == gateway.lower())
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise CmdError(
            f"unknown gateway {gateway!r}: not in {path} ({len(rows)} gateways){hint}; "
            "nothing was sent",
            EXIT_USAGE,
        )
    row = exact[0]
    if (row.get("status") or "enrolled") != "enrolled":
        raise CmdError(
            f"gateway {gateway!r} is {row['status']} in {path}; nothing was sent", EXIT_USAGE
        )
    return Location(row["district"], row["ward"], gateway, None, f"registry {path.name}")


def _sqlite_rows(path: Path) -> list[dict[str, str]]:
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            cur = db.execute("SELECT id, district, ward, status FROM gateways")
            return [dict(zip(("id", "district", "ward", "status"), r, strict=True)) for r in cur]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise CmdError(
            f"--registry {path}: not a wardgate enrollment registry ({exc}); give the fleet's "
            "registry.sqlite3 or a `wardgate provision status --csv` file",
            EXIT_USAGE,
        ) from None


def _csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CmdError(f"--registry {path}: cannot read it as CSV ({exc})", EXIT_USAGE) from None
    columns = set(rows[0]) if rows else set()
    missing = {"id", "district", "ward"} - columns
    if missing:
        raise CmdError(
            f"--registry {path}: no column {', '.join(sorted(missing))}; give the fleet's "
            "registry.sqlite3 or a `wardgate provision status --csv` file",
            EXIT_USAGE,
        )
    return rows


# --- the broker ---------------------------------------------------------------------------------


def endpoint(args: argparse.Namespace):
    from protocol import mqtt as policy

    tls = None
    if args.ca is not None:
        tls = policy.Tls(args.ca, args.cert, args.key, args.server_name)
    who = args.username or "anonymous"
    return policy.Endpoint(
        host=args.host,
        port=args.port,
        tls=tls,
        username=args.username,
        password_file=args.password_file,
        # unique per run (a provisioned broker replaces it by the account name anyway)
        client_id=f"wardgate-cmd-{who}-{uuid.uuid4().hex[:8]}",
        keepalive_s=30,
        clean_start=True,
        setting="cmd",
        names={
            "username": "--username",
            "password": "--password-file",
            "password_file": "--password-file",
            "tls": "--ca/--cert/--key",
            "tls.ca": "--ca",
        },
    )


class Session:
    """One short MQTT v5 connection through the policy (protocol/mqtt.py): look up, send, wait."""

    CONNECT_TIMEOUT_S = 10.0

    def __init__(self, endpoint, prefix: str) -> None:
        self.endpoint = endpoint
        self.prefix = prefix
        self.client = None
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stash: deque[tuple[str, Any]] = deque()  # events that came while waiting for others

    def open(self) -> None:
        from protocol import mqtt as policy

        ep = self.endpoint
        if ep.password_file is not None and not ep.password_file.is_file():
            raise CmdError(f"--password-file {ep.password_file}: no such file", EXIT_USAGE)
        try:
            self.client = policy.new_client(ep)
        except policy.ConnectError as exc:
            raise CmdError(str(exc), EXIT_USAGE) from None
        c = self.client
        c.on_connect = lambda _c, _u, _f, rc, _p: self.events.put(("connack", rc))
        c.on_disconnect = lambda _c, _u, _f, rc, _p: self.events.put(("disconnect", rc))
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.events.put(("suback", (mid, rcs)))
        c.on_publish = lambda _c, _u, mid, rc, _p: self.events.put(("puback", (mid, rc)))
        c.on_message = lambda _c, _u, msg: self.events.put(("message", msg))
        try:
            policy.connect(c, ep)
        except Exception as exc:  # socket, TLS: one line with the hint
            raise CmdError(policy.explain_error(exc, ep)) from None
        c.loop_start()
        kind, rc = self._next(("connack", "disconnect"), self.CONNECT_TIMEOUT_S)
        if kind is None:
            raise CmdError(f"no answer from the broker at {ep.where} within "
                           f"{self.CONNECT_TIMEOUT_S:g} s")  # fmt: skip
        if kind == "disconnect" or rc.is_failure:
            why = policy.explain(rc, ep) if kind == "connack" else (
                "the broker closed the connection before accepting it (a refused client "
                f"certificate?): {policy.explain(rc, ep)}")  # fmt: skip
            raise CmdError(f"broker {ep.where} refused {ep.username or 'us'}: {why}")

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.disconnect()
            finally:
                self.client.loop_stop()

    def _next(self, kinds: tuple[str, ...], timeout: float):
        """The next event of one of `kinds` within `timeout`, (None, None) after it; others wait
        for a later call. A lost connection ends the command."""
        for item in list(self.stash):
            if item[0] in kinds:
                self.stash.remove(item)
                return item
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, None
            try:
                kind, value = self.events.get(timeout=left)
            except queue.Empty:
                return None, None
            if kind in kinds:
                return kind, value
            if kind == "disconnect":
                from protocol.mqtt import explain

                raise CmdError(f"the broker closed the connection: {explain(value, self.endpoint)}")
            self.stash.append((kind, value))

    def _subscribe(self, topic: str, what: str) -> None:
        result, mid = self.client.subscribe(topic, qos=1)
        if result != 0:
            raise CmdError(f"could not subscribe to {topic} (paho error {result})")
        deadline = time.monotonic() + self.CONNECT_TIMEOUT_S
        while True:
            kind, value = self._next(("suback",), deadline - time.monotonic())
            if kind is None:
                raise CmdError(f"the broker did not confirm the subscription to {topic}")
            got_mid, codes = value
            if got_mid == mid:
                break
        code = codes[0]
        if code.is_failure:
            from protocol.mqtt import explain

            raise CmdError(
                f"the broker refused {self.endpoint.username or 'this account'} {what} "
                f"({topic}): {explain(code, self.endpoint)}"
            )

    def locate(self, gateway: str, district: str | None, timeout: float) -> Location:
        """Where the gateway is, from its retained `state` (only what this account may read)."""
        from protocol.topics import parse

        topic = f"{self.prefix}/{district or '+'}/+/{gateway}/state"
        self._subscribe(topic, "reading gateway states")
        found: dict[tuple[str, str], bool | None] = {}
        deadline = time.monotonic() + timeout
        while True:
            # retained messages follow the SUBACK at once: after the first, a short grace
            left = deadline - time.monotonic()
            kind, msg = self._next(("message",), min(left, 0.3) if found else left)
            if kind is None:
                break
            parts = parse(msg.topic, self.prefix)
            if parts is None or parts["gateway"] != gateway or parts["leaf"] != "state":
                continue
            if not msg.payload:  # a cleared retained state
                continue
            try:
                online = json.loads(msg.payload).get("online")
            except (ValueError, AttributeError):
                online = None
            found[(parts["district"], parts["ward"])] = online if isinstance(online, bool) else None
        self.client.unsubscribe(topic)
        if not found:
            scope = f"district {district}" if district else "any district this account may read"
            raise CmdError(
                f"unknown gateway {gateway!r}: no retained state at {topic} in {timeout:g} s "
                f"({scope}; never enrolled, never connected, or outside your account's "
                "districts; --registry looks it up in the fleet's registry); nothing was sent",
                EXIT_USAGE,
            )
        if len(found) > 1:
            places = ", ".join(f"{d}/{w}" for d, w in sorted(found))
            raise CmdError(
                f"gateway {gateway!r} has retained state in several places ({places}); give "
                "--district or --registry; nothing was sent",
                EXIT_USAGE,
            )
        (d, w), online = next(iter(found.items()))
        return Location(d, w, gateway, online, "retained state")

    def command(
        self, where: Location, name: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Publish the command and return the gateway's answer to it (its own correlation)."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from protocol.topics import GatewayTopics

        topics = GatewayTopics(self.prefix, where.district, where.ward, where.gateway)
        self._subscribe(topics.cmd_res, "reading the gateway's answers")
        request_id = uuid.uuid4().hex
        correlation = uuid.UUID(request_id).bytes
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation
        props.ResponseTopic = topics.cmd_res
        props.ContentType = "application/json"
        body = json.dumps({"id": request_id, "args": args}, separators=(",", ":"))
        info = self.client.publish(topics.cmd(name), body, qos=1, properties=props)
        deadline = time.monotonic() + timeout
        acked = False
        while True:
            kind, value = self._next(("puback", "message"), deadline - time.monotonic())
            if kind is None:
                state = "the broker accepted it" if acked else "the broker never confirmed it"
                raise CmdError(
                    f"no answer from {where.gateway} within {timeout:g} s ({state}); is the "
                    "gateway offline or busy? A gateway that was online before gets the command "
                    "from its persistent session when it returns, and runs it then"
                )
            if kind == "puback":
                mid, code = value
                if mid != info.mid:
                    continue
                if code.is_failure:
                    value = getattr(code, "value", code)
                    raise CmdError(
                        f"the broker refused the command {topics.cmd(name)}: {code} "
                        f"(0x{value:02X}): {self.endpoint.username or 'this account'} may not "
                        f"send {name} to district {where.district} (an operator commands only "
                        "its own districts, and only the commands the fleet grants); the "
                        "gateway did not get it"
                    )
                acked = True
                continue
            if value.topic != topics.cmd_res:
                continue
            got = getattr(value.properties, "CorrelationData", None)
            try:
                reply = json.loads(value.payload)
            except ValueError:
                continue
            if not isinstance(reply, dict):
                continue
            if got == correlation or (got is None and reply.get("id") == request_id):
                return reply
