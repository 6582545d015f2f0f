"""A fault-injecting TCP proxy for MQTT links: the network faults a field gateway meets, on demand.

It sits between a client and a real broker (localhost only) and runs as its own process, so that
it competes with neither side for a GIL. The test drives it through `FaultProxy`:

- `freeze()` / `thaw()`: stop forwarding both ways with the sockets left open (a stalled path);
  bytes read meanwhile are held, counted, and delivered in order on `thaw()`;
- `drop()`: close both sides (FIN) of every current connection;
- `reset()`: abort both sides with a TCP RST (SO_LINGER 0);
- `reset_mid_publish(n)`: forward only the first `n` bytes of the next client-to-broker PUBLISH,
  then RST both sides (the broker holds a torn packet);
- `half_open()`: close the broker side and leave the client's socket open and silent, as a dead
  NAT or a cut cable does: only the client's keepalive can notice;
- `delay(s)`: add `s` seconds of latency to every chunk, both ways, order kept.

It also parses the MQTT fixed headers flowing through, so a test can see what the client really
did on the wire: PUBLISH packets client to broker, PUBACKs delivered broker to client, the most
QoS 1/2 PUBLISHes a client ever had unacknowledged on one connection (`max_inflight`), and the
Receive Maximum the broker announced in its CONNACK.

    python -m tests.faultproxy --target 127.0.0.1:1883   # prints {"port": ..., "control": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

CONNACK, PUBLISH, PUBACK = 2, 3, 4

# MQTT v5 property identifiers and the size of their values (for skipping to Receive Maximum)
_PROP_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_PROP_TWO = {0x13, 0x21, 0x22, 0x23}
_PROP_FOUR = {0x02, 0x11, 0x18, 0x27}
_PROP_STRING = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F}
RECEIVE_MAXIMUM = 0x21


def _varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, next position) of an MQTT variable byte integer, or None if incomplete."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ValueError("malformed remaining length")


@dataclass
class Packet:
    type: int
    flags: int
    offset: int  # stream offset of its first byte
    packet_id: int | None = None
    receive_maximum: int | None = None


class MqttStream:
    """Splits one direction of an MQTT v5 byte stream into packets (headers only matter)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]

    def feed(self, chunk: bytes) -> list[Packet]:
        self.buf += chunk
        out: list[Packet] = []
        pos = 0
        while True:
            if pos + 2 > len(self.buf):
                break
            header = _varint(self.buf, pos + 1)
            if header is None:
                break
            length, body = header
            if body + length > len(self.buf):
                break
            out.append(self._decode(self.buf[pos], bytes(self.buf[body : body + length]), pos))
            pos = body + length
        del self.buf[:pos]
        self.base += pos
        return out

    def _decode(self, first: int, body: bytes, pos: int) -> Packet:
        packet = Packet(first >> 4, first & 0x0F, self.base + pos)
        if packet.type == PUBLISH and (packet.flags >> 1) & 3:
            topic_len = struct.unpack_from("!H", body)[0]
            packet.packet_id = struct.unpack_from("!H", body, 2 + topic_len)[0]
        elif packet.type == PUBACK:
            packet.packet_id = struct.unpack_from("!H", body)[0]
        elif packet.type == CONNACK:
            packet.receive_maximum = _receive_maximum(body)
        return packet


def _receive_maximum(body: bytes) -> int:
    """The CONNACK's Receive Maximum (65,535 when the broker leaves it out)."""
    if len(body) < 3:
        return 65535
    parsed = _varint(body, 2)
    if parsed is None:
        return 65535
    length, pos = parsed
    end = pos + length
    while pos < end:
        ident = body[pos]
        pos += 1
        if ident == RECEIVE_MAXIMUM:
            return struct.unpack_from("!H", body, pos)[0]
        if ident in _PROP_BYTE:
            pos += 1
        elif ident in _PROP_TWO:
            pos += 2
        elif ident in _PROP_FOUR:
            pos += 4
        elif ident in _PROP_STRING:
            pos += 2 + struct.unpack_from("!H", body, pos)[0]
        elif ident == 0x26:  # user property: a string pair
            pos += 2 + struct.unpack_from("!H", body, pos)[0]
            pos += 2 + struct.unpack_from("!H", body, pos)[0]
        else:
            return 65535  # not a CONNACK property we know: give up rather than misparse
    return 65535


_EOF, _RESET = object(), object()


@dataclass
class _Way:
    """One direction of one proxied connection."""

    name: str  # "c2b" or "b2c"
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stream: MqttStream = field(default_factory=MqttStream)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


@dataclass
class _Conn:
    number: int
    client: asyncio.StreamWriter
    broker: asyncio.StreamWriter
    ways: list[_Way] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    inflight: set[int] = field(default_factory=set)  # PUBLISH ids the client awaits a PUBACK for
    max_inflight: int = 0
    closed: bool = False


def _abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    transport = writer.transport
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


class Proxy:
    """The proxy's event loop side (runs in the proxy process)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.conns: dict[int, _Conn] = {}
        self.silent: list[asyncio.StreamWriter] = []  # client sides left half-open
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.delay_s = 0.0
        self.cut_next_publish: int | None = None
        self.numbers = 0
        self.stats: dict[str, Any] = {
            "connections": 0,
            "publish_c2b": 0,
            "publish_qos0_c2b": 0,
            "publish_qos1_c2b": 0,
            "puback_b2c": 0,
            "max_inflight": 0,
            "receive_maximum": None,
            "cuts": 0,
        }

    # --- connections -----------------------------------------------------------------------
    async def on_client(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter):
        try:
            breader, bwriter = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(cwriter, rst=True)  # nothing behind us: refuse like a dead broker would
            return
        self.numbers += 1
        conn = _Conn(self.numbers, cwriter, bwriter)
        conn.ways = [_Way("c2b", creader, bwriter), _Way("b2c", breader, cwriter)]
        self.conns[conn.number] = conn
        self.stats["connections"] += 1
        for way in conn.ways:
            conn.tasks.append(asyncio.create_task(self._read(conn, way)))
            conn.tasks.append(asyncio.create_task(self._write(conn, way)))

    async def _read(self, conn: _Conn, way: _Way) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk = await way.reader.read(65536)
                if not chunk:
                    break
                base = way.stream.base + len(way.stream.buf)
                packets = way.stream.feed(chunk)
                acks: list[int] = []
                cut: int | None = None
                for p in packets:
                    if way.name == "c2b" and p.type == PUBLISH:
                        self._count_publish(conn, p)
                        if self.cut_next_publish is not None and cut is None:
                            cut = max(0, p.offset - base) + self.cut_next_publish
                            self.cut_next_publish = None
                    elif way.name == "b2c" and p.type == PUBACK and p.packet_id is not None:
                        acks.append(p.packet_id)
                    elif way.name == "b2c" and p.type == CONNACK:
                        self.stats["receive_maximum"] = p.receive_maximum
                due = loop.time() + self.delay_s
                if cut is not None:
                    way.queue.put_nowait((due, chunk[:cut], acks))
                    way.queue.put_nowait(_RESET)
                    self.stats["cuts"] += 1
                    return
                way.queue.put_nowait((due, chunk, acks))
        except (ConnectionError, OSError):
            pass
        way.queue.put_nowait(_EOF)

    def _count_publish(self, conn: _Conn, p: Packet) -> None:
        self.stats["publish_c2b"] += 1
        if p.packet_id is None:
            self.stats["publish_qos0_c2b"] += 1
            return
        self.stats["publish_qos1_c2b"] += 1
        conn.inflight.add(p.packet_id)
        conn.max_inflight = max(conn.max_inflight, len(conn.inflight))
        self.stats["max_inflight"] = max(self.stats["max_inflight"], conn.max_inflight)

    async def _write(self, conn: _Conn, way: _Way) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await way.queue.get()
                if item is _EOF or item is _RESET:
                    await self.thawed.wait()
                    self._close(conn, rst=item is _RESET)
                    return
                due, data, acks = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.thawed.wait()
                if conn.closed:
                    return
                way.writer.write(data)
                await way.writer.drain()
                for mid in acks:  # the client has this PUBACK now
                    conn.inflight.discard(mid)
                    self.stats["puback_b2c"] += 1
        except (ConnectionError, OSError):
            self._close(conn, rst=False)

    def _close(self, conn: _Conn, rst: bool, client_too: bool = True) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.number, None)
        current = asyncio.current_task()
        for task in conn.tasks:
            if task is not current:
                task.cancel()
        _abort(conn.broker, rst)
        if client_too:
            _abort(conn.client, rst)
        else:
            conn.client.transport.pause_reading()
            self.silent.append(conn.client)

    # --- faults ----------------------------------------------------------------------------
    def command(self, cmd: str, arg: Any) -> Any:
        if cmd == "freeze":
            self.thawed.clear()
        elif cmd == "thaw":
            self.thawed.set()
        elif cmd in ("drop", "reset", "half_open"):
            for conn in list(self.conns.values()):
                self._close(conn, rst=cmd == "reset", client_too=cmd != "half_open")
        elif cmd == "reset_mid_publish":
            self.cut_next_publish = int(arg)
        elif cmd == "delay":
            self.delay_s = float(arg)
        elif cmd == "clear":
            self.stats["max_inflight"] = 0
            for conn in self.conns.values():
                conn.max_inflight = len(conn.inflight)
        elif cmd != "stats":
            raise ValueError(f"unknown command {cmd!r}")
        return {
            **self.stats,
            "open": len(self.conns),
            "inflight_now": {n: len(c.inflight) for n, c in self.conns.items()},
            "frozen": not self.thawed.is_set(),
        }

    async def on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        while line := await reader.readline():
            request = json.loads(line)
            try:
                reply = {"ok": True, "stats": self.command(request["cmd"], request.get("arg"))}
            except Exception as exc:  # report to the test, keep serving
                reply = {"ok": False, "error": repr(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()


async def _serve(target: str, port: int) -> None:
    host, _, tport = target.rpartition(":")
    proxy = Proxy(host, int(tport))
    server = await asyncio.start_server(proxy.on_client, "127.0.0.1", port)
    control = await asyncio.start_server(proxy.on_control, "127.0.0.1", 0)
    ports = {
        "port": server.sockets[0].getsockname()[1],
        "control": control.sockets[0].getsockname()[1],
    }
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


class FaultProxy:
    """The test side: starts `python -m tests.faultproxy` and sends it commands."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = f"{target_host}:{target_port}"
        self.listen_port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._control: socket.socket | None = None
        self._lines: Any = None

    def start(self) -> FaultProxy:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faultproxy", "--target", self.target]
            + ["--port", str(self.listen_port)],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        ports = json.loads(self.proc.stdout.readline() or b"null")
        if not ports:
            raise RuntimeError("the fault proxy did not start")
        self.port = self.listen_port = ports["port"]
        self._control = socket.create_connection(("127.0.0.1", ports["control"]), timeout=10)
        self._lines = self._control.makefile("rb")
        return self

    def _call(self, cmd: str, arg: Any = None) -> dict[str, Any]:
        assert self._control is not None, "proxy not started"
        self._control.sendall(json.dumps({"cmd": cmd, "arg": arg}).encode() + b"\n")
        reply = json.loads(self._lines.readline())
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply["stats"]

    def freeze(self) -> dict[str, Any]:
        return self._call("freeze")

    def thaw(self) -> dict[str, Any]:
        return self._call("thaw")

    def drop(self) -> dict[str, Any]:
        return self._call("drop")

    def reset(self) -> dict[str, Any]:
        return self._call("reset")

    def reset_mid_publish(self, nbytes: int) -> dict[str, Any]:
        return self._call("reset_mid_publish", nbytes)

    def half_open(self) -> dict[str, Any]:
        return self._call("half_open")

    def delay(self, seconds: float) -> dict[str, Any]:
        return self._call("delay", seconds)

    def clear(self) -> dict[str, Any]:
        """Forget the in-flight maximum seen so far."""
        return self._call("clear")

    def stats(self) -> dict[str, Any]:
        return self._call("stats")

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "proxy state") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {stats}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="broker host:port")
    parser.add_argument("--port", type=int, default=0, help="listen port (0: any free one)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.target, args.port))


if __name__ == "__main__":
    main()
