"""Fire-path benchmark (issue 3): a node's alarm edge to an MQTT subscriber, under load.

    .venv/bin/python bench/fire_path.py            # full run (300 rounds), about 45 s
    .venv/bin/python bench/fire_path.py --quick    # smoke run (30 rounds), about 8 s
    .venv/bin/python bench/fire_path.py --json out.json --keep   # per-alarm stamps, logs

Nothing is mocked. In one run, against one private Mosquitto (devtools.devbroker, plain listener,
anonymous):

- two real node firmwares under the MicroPython unix port (devtools.unix_node.UnixNode), each
  with one manual call point (sampled every 5 ms, debounce 1) and a heartbeat every second:
  n07 on a plain pty, n08 on a pty paced at 115200 baud by a relay process (see below);
- the real gateway, `edge.runtime.Gateway` in this process, one `[[serial.ports]]` per node,
  heartbeat every second, alarm acknowledgement supervision on (default 100 s), the default
  outbox on disk under /var/tmp (every alarm is fsynced before it counts as accepted);
- a QoS 1 subscriber in its own (spawned) process that stamps each alarm's arrival with
  time.time_ns() and acknowledges it on the gateway's `ack` topic, as `wardgate alarms` does;
- a thread emitting ~1,000 readings/telemetry per second through the same `Gateway.emit` (10 every
  10 ms; bench/uplink.py's mix of readings and heartbeat-shaped telemetry).

Rounds (300; order shuffled per round; one alarm in flight at a time, 10-30 ms apart):

1. A node alarm: the bench presses the call point (a `set` line on the firmware's stdin); the
   firmware samples it, latches, writes the alarm frame to its UART and right after that prints
   `EDGE alarm ... t_ns=` with its own time.time_ns() (CLOCK_REALTIME, microseconds). Latency =
   arrival at the subscriber (time.time_ns(), same clock, same machine) - that edge. Then the
   call point is released and `sensor_reset` is run (the in-process handler behind
   cmd/sensor_reset), which resets the node's latch and the gateway's memory of it.
2. The baseline: `Gateway.emit(alarm)` called by the bench itself, timed from just before the
   call to arrival. Same gateway, same load, interleaved with the node alarms, so the difference
   is what the serial path adds: pty, pyserial, frame decoding and the serial pipeline thread.

The gateway's emit() is wrapped (on this instance) to stamp alarms going in and out, which splits
the latency into: edge -> the serial driver calls emit(), the emit() call (outbox commit and
fsync), emit() returned -> receipt (negative when the alarm is on the wire before emit() returns).

Wire time. At 115200 8N1 a byte takes 10 bits, so the alarm frame takes bytes x 10 / 115200 s.
A pty has no baud rate (bytes cross at memory speed), so for n07 the wire time is computed and
added to the measured latency. n08's line is paced: a relay process sits between the firmware's
pty and a second pty that the gateway opens, and delivers each chunk when its last byte would have
arrived at 115200 baud (each direction is a line of its own that stays busy while earlier bytes
are on it), so n08's numbers include the wire time as experienced. The relay runs at SCHED_FIFO
and spins the last 0.3 ms before a delivery; it reports how late it delivered, and when each
alarm frame left the node, which checks the firmware's edge stamp.

The node processes and the relay stand in for hardware and get SCHED_FIFO: on two shared cores
the gateway's reader, woken by the frame, could otherwise preempt the firmware between its write
and its stamp, and the latency would look shorter than it is (seen: up to 1.3 ms, 12 of 300).

Target (issue 3): p99 <= wire time + 10 ms. PASS/MISS is printed; the exit status is 0 either
way (a benchmark, not a test). Experiment knobs (not the measurement): --outbox-fsync,
--alarm-ack, --switch-interval.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import random
import re
import select
import subprocess
import sys
import threading
import time
import tty
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `edge`, `firmware` importable
    sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402

from bench.common import (  # noqa: E402
    RssSampler,
    finish_run,
    fmt,
    loadavg,
    machine_summary,
    mb,
    percentile,
    print_table,
    ratio,
    work_dir,
)
from bench.uplink import make_specs  # noqa: E402
from devtools.devbroker import MOSQUITTO, MosquittoBroker  # noqa: E402
from devtools.unix_node import PROTOCOL_DIR, UnixNode, micropython_binary  # noqa: E402
from edge import config as config_mod  # noqa: E402
from edge.runtime import Gateway  # noqa: E402
from protocol import node_protocol as np  # noqa: E402
from protocol.events import Kind  # noqa: E402

TARGET_OVER_WIRE_MS = 10.0
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
GATEWAY_ID = "bench-fire"
DIRECT_SOURCE = "bench/direct"
SENSOR = {"kind": "call_point", "name": "mcp", "pin": "mcp", "debounce": 1}
SAMPLE_MS = 5
NODE_PRIORITY = 10  # SCHED_FIFO priorities of the hardware stand-ins
LINE_PRIORITY = 20
SPIN_NS = 300_000  # the paced line wakes this early and spins to the exact moment
RELEASE_SETTLE_S = 0.02  # 4 node samples: the release is seen before the reset re-arms the latch


@dataclass(frozen=True)
class Params:
    rounds: int = 300
    spacing_s: float = 0.02  # mean pause before each alarm; uniform in [0.5, 1.5] x this
    load_rate: int = 1000
    warmup_s: float = 1.0
    baud: int = 115200
    outbox_fsync: str = "critical"  # the gateway's default: every alarm is fsynced
    alarm_ack: str = "ack"  # ack: supervision on, subscriber acks; silent: never acks; off
    switch_interval_ms: float = 0.0  # 0: leave CPython's GIL switch interval (5 ms) alone


QUICK = Params(rounds=30, warmup_s=0.5)


def node_config(node: int) -> dict[str, Any]:
    return {"node": node, "heartbeat_s": 1, "sample_ms": SAMPLE_MS, "sensors": [SENSOR]}


def alarm_frame_sizes() -> list[int]:
    """Bytes on the wire of this node's alarm frame, over every sequence number (COBS varies)."""
    fields = {"sensor": 0, "cause": SENSOR["kind"], "value": 100, "name": SENSOR["name"]}
    return sorted({len(np.encode(np.Message(np.ALARM, 7, seq, fields))) for seq in range(256)})


def wire_ms(n_bytes: float, baud: int) -> float:
    return n_bytes * BITS_PER_BYTE / baud * 1000


def hardware_priority(pid: int, priority: int = NODE_PRIORITY) -> bool:
    """Real-time priority for what stands in for hardware (the nodes, the paced line).

    A node is a microcontroller of its own, but here it shares two cores with the gateway: its
    frame write wakes the gateway, which could preempt it before it stamps its edge, so the
    stamp would come late and the latency look shorter than it is. SCHED_FIFO keeps the node
    running until it sleeps again (its loop uses ~3 % of a core, so it starves nobody). The
    paced line ranks above the nodes: a node busy in its garbage collector must not hold a
    frame of the other node back on the line.
    """
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(priority))
        return True
    except (OSError, AttributeError):
        return False


# --- the subscriber (its own process) ------------------------------------------------------------
def _subscriber_main(conn: Any, host: str, port: int, acknowledge: bool) -> None:
    """A receiver-like QoS 1 subscriber: stamps alarms, acknowledges them, counts the rest."""
    from protocol.events import decode

    send_lock = threading.Lock()
    counts: Counter[str] = Counter()
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe("wg/#", qos=1)

    def on_message(client, userdata, msg) -> None:
        now = time.time_ns()
        topic = msg.topic
        kind = topic.rsplit("/", 1)[-1]
        counts[kind] += 1
        if kind == "tele" and "pipelines" in decode(msg.payload).data:
            counts["heartbeat"] += 1  # the gateway's own, not the load's telemetry
        if topic.endswith("/evt/alarm"):
            event = decode(msg.payload)
            with send_lock:
                conn.send(("alarm", event.id_hex, event.source, now, event.data))
            if acknowledge:
                body = {"id": event.id_hex, "by": "bench", "time_ms": now // 10**6}
                base = topic[: -len("/evt/alarm")]
                client.publish(base + "/ack", json.dumps(body).encode(), qos=1)

    # a plain paho client on purpose, not protocol/mqtt.py's policy: the measuring side stays
    # the same whatever the policy does (tests/test_structure.py allow-lists bench/)
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id="bench-fire-subscriber",
        protocol=mqtt.MQTTv5,
    )
    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    client.connect(host, port, keepalive=10)
    client.loop_start()
    with send_lock:
        conn.send(("ready",) if subscribed.wait(20) else ("error", "not subscribed in 20 s"))
    while True:
        request = conn.recv()
        if request[0] == "stop":
            break
        if request[0] == "counts":
            with send_lock:
                conn.send(("counts", dict(counts)))
    client.loop_stop()
    client.disconnect()


@dataclass
class Arrival:
    event_id: str
    source: str
    t_ns: int
    data: dict[str, Any]


class Subscriber:
    def __init__(self, broker: MosquittoBroker, acknowledge: bool) -> None:
        ctx = multiprocessing.get_context("spawn")  # the bench has threads: no fork
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_subscriber_main,
            args=(child, broker.host, broker.port, acknowledge),
            daemon=True,
        )
        self.proc.start()
        answer = self.conn.recv() if self.conn.poll(30) else ("error", "no answer in 30 s")
        if answer[0] != "ready":
            raise RuntimeError(f"the bench subscriber did not come up: {answer}")
        self.arrived = threading.Condition()
        self.alarms: list[Arrival] = []
        self.by_id: dict[str, Arrival] = {}
        self._counts: list[dict[str, int]] = []
        self._reader = threading.Thread(target=self._read, name="bench-sub-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                msg = self.conn.recv()
                with self.arrived:
                    if msg[0] == "alarm":
                        arrival = Arrival(*msg[1:])
                        if arrival.event_id not in self.by_id:  # QoS 1 may repeat
                            self.by_id[arrival.event_id] = arrival
                            self.alarms.append(arrival)
                    elif msg[0] == "counts":
                        self._counts.append(msg[1])
                    self.arrived.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not (found := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.arrived.wait(left)
            return found

    def counts(self) -> dict[str, int]:
        with self.arrived:
            n = len(self._counts)
        self.conn.send(("counts",))
        self.wait(lambda: len(self._counts) > n, 10)
        return self._counts[-1] if self._counts else {}

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            self.conn.send(("stop",))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


# --- the 115200-baud line (its own process) ------------------------------------------------------
def _relay_main(conn: Any, node_port: str, link: str, baud: int) -> None:
    """Joins the node's pty to a new pty (the gateway's side) through two paced lines.

    A chunk read at t goes out when its last byte would have arrived: at max(t, line free) +
    bytes x 10 / baud. select() sleeps until shortly before a chunk is due, then a short spin
    lands the write on time (a fraction of a millisecond per chunk, not a core).
    """
    byte_ns = BITS_PER_BYTE * 10**9 // baud
    realtime = hardware_priority(0, LINE_PRIORITY)  # a UART does not queue for a CPU
    node_fd = os.open(node_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    gw_master, gw_slave = os.openpty()
    tty.setraw(gw_slave)  # held open: the gateway's side never looks hung up, as a wire
    os.set_blocking(gw_master, False)
    link_path = Path(link)
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.unlink(missing_ok=True)
    link_path.symlink_to(os.ttyname(gw_slave))
    names = {node_fd: "node->gateway", gw_master: "gateway->node"}
    out_of = {node_fd: gw_master, gw_master: node_fd}
    queues: dict[int, deque[tuple[int, bytes]]] = {node_fd: deque(), gw_master: deque()}
    line_free = {node_fd: 0, gw_master: 0}
    late_us: dict[str, list[float]] = {name: [] for name in names.values()}
    sent = Counter()
    open_fds = [node_fd, gw_master]
    decoder = np.Decoder()
    alarm_reads: list[tuple[int, int]] = []  # (seq, time_ns when its last byte left the node)
    conn.send(("ready",))
    stop_fd = conn.fileno()
    while True:
        now = time.monotonic_ns()
        dues = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, (min(dues) - now - SPIN_NS) / 1e9) if dues else 0.5
        readable, _, _ = select.select(open_fds + [stop_fd], [], [], timeout)
        if stop_fd in readable:
            break
        now = time.monotonic_ns()
        for fd in readable:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:  # the node ended (EIO on its pty): stop reading that side
                open_fds.remove(fd)
                continue
            if not data:
                open_fds.remove(fd)
                continue
            if fd == node_fd:
                read_ns = time.time_ns()
                for msg in decoder.feed(data):
                    if msg.type == np.ALARM:
                        alarm_reads.append((msg.seq, read_ns))
            due = max(now, line_free[fd]) + len(data) * byte_ns
            line_free[fd] = due
            queues[fd].append((due, data))
        now = time.monotonic_ns()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now + SPIN_NS:
                due, data = queue.popleft()
                while (now := time.monotonic_ns()) < due:
                    pass
                late_us[names[fd]].append((now - due) / 1000)
                with contextlib.suppress(OSError):
                    os.write(out_of[fd], data)
                sent[names[fd]] += len(data)
    stats = {"late_us": late_us, "bytes": dict(sent), "realtime": realtime}
    conn.send(("stats", {**stats, "alarm_reads": alarm_reads}))
    link_path.unlink(missing_ok=True)
    for fd in (node_fd, gw_master, gw_slave):
        with contextlib.suppress(OSError):
            os.close(fd)


class PacedLine:
    def __init__(self, node_port: str, link: Path, baud: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_relay_main, args=(child, node_port, str(link), baud), daemon=True
        )
        self.proc.start()
        answer = self.conn.recv() if self.conn.poll(30) else ("error", "no answer in 30 s")
        if answer[0] != "ready":
            raise RuntimeError(f"the paced line did not come up: {answer}")

    def stop(self) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            self.conn.send(("stop",))
            if self.conn.poll(10):
                stats = self.conn.recv()[1]
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        return stats


# --- measuring -----------------------------------------------------------------------------------
@dataclass
class PathResult:
    """One way an alarm takes; every list is in ms, one entry per received alarm."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)  # edge (or emit call) -> receipt
    to_emit_ms: list[float] = field(default_factory=list)  # edge -> the driver calls emit()
    emit_ms: list[float] = field(default_factory=list)  # the emit() call (durable commit)
    after_emit_ms: list[float] = field(default_factory=list)  # emit() returned -> receipt
    press_to_edge_ms: list[float] = field(default_factory=list)  # bench press -> firmware edge
    missing: int = 0
    reset_failures: int = 0
    #: time_ns of (press, edge, emit() in, emit() out, arrival) and the frame's seq, per alarm
    raw: list[tuple[int, ...]] = field(default_factory=list)

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


@dataclass
class Rig:
    gateway: Gateway
    sub: Subscriber
    nodes: dict[str, UnixNode]  # label -> node
    emits: dict[str, tuple[int, int]]  # alarm id -> (emit() entered, returned), time_ns


def timed_emits(gw: Gateway) -> dict[str, tuple[int, int]]:
    """Wrap this gateway's emit() (what the pipelines call) to stamp alarms going in and out."""
    stamps: dict[str, tuple[int, int]] = {}
    emit = gw.emit

    def timed(kind, source, data=None, severity=None):
        t0 = time.time_ns()
        event = emit(kind, source, data, severity)
        if event.kind is Kind.ALARM:
            stamps[event.id_hex] = (t0, time.time_ns())
        return event

    gw.emit = timed  # type: ignore[method-assign]
    return stamps


def node_alarm(rig: Rig, label: str, result: PathResult) -> None:
    node = rig.nodes[label]
    source = f"{label}/{SENSOR['name']}"
    seen = sum(a.source == source for a in rig.sub.alarms)
    n_edges = len(node.edges)
    t_press = time.time_ns()
    node.press(SENSOR["name"])
    try:
        edge = node.wait_edge("alarm", timeout=5, after=n_edges)
    except TimeoutError:
        result.missing += 1
        node.release(SENSOR["name"])
        return

    def arrived() -> Arrival | None:
        mine = [a for a in rig.sub.alarms if a.source == source]
        return mine[seen] if len(mine) > seen else None

    arrival = rig.sub.wait(arrived, 10)
    node.release(SENSOR["name"])
    if arrival is None:
        result.missing += 1
    else:
        result.latencies_ms.append((arrival.t_ns - edge.t_ns) / 1e6)
        result.press_to_edge_ms.append((edge.t_ns - t_press) / 1e6)
        # the alarm can be on the wire before emit() has returned (and been stamped)
        stamp = rig.emits.get(arrival.event_id)
        deadline = time.monotonic() + 2
        while stamp is None and time.monotonic() < deadline:
            time.sleep(0.0005)
            stamp = rig.emits.get(arrival.event_id)
        if stamp is not None:
            result.to_emit_ms.append((stamp[0] - edge.t_ns) / 1e6)
            result.emit_ms.append((stamp[1] - stamp[0]) / 1e6)
            result.after_emit_ms.append((arrival.t_ns - stamp[1]) / 1e6)
        seq = re.search(r"seq=(\d+)", edge.what)
        frame_seq = int(seq[1]) if seq else -1
        result.raw.append((t_press, edge.t_ns, *(stamp or (0, 0)), arrival.t_ns, frame_seq))
    time.sleep(RELEASE_SETTLE_S)
    answer = rig.gateway._commands["sensor_reset"]({"sources": [label]})
    if answer != {label: "ok"}:
        result.reset_failures += 1


def direct_alarm(rig: Rig, result: PathResult) -> None:
    t0 = time.time_ns()
    event = rig.gateway.emit(Kind.ALARM, DIRECT_SOURCE, {"cause": "call_point"})
    t1 = time.time_ns()
    arrival = rig.sub.wait(lambda: rig.sub.by_id.get(event.id_hex), 10)
    if arrival is None:
        result.missing += 1
        return
    result.latencies_ms.append((arrival.t_ns - t0) / 1e6)
    result.emit_ms.append((t1 - t0) / 1e6)
    result.after_emit_ms.append((arrival.t_ns - t1) / 1e6)


class Load:
    """~`rate` readings/telemetry per second through Gateway.emit, from a thread of its own."""

    def __init__(self, gw: Gateway, rate: int) -> None:
        self.gw = gw
        self.rate = rate
        self.specs = make_specs(5000, seed=11, alarms=False)
        self.stop_event = threading.Event()
        self.emitted = 0
        self.thread = threading.Thread(target=self._run, name="bench-load", daemon=True)
        self.started = 0.0
        self.seconds = math.nan
        self.achieved = math.nan

    def start(self) -> Load:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def _run(self) -> None:
        tick = 0.01  # 10 events every 10 ms: time.sleep cannot pace single events at 1 ms
        per_tick = max(1, round(self.rate * tick))
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            for _ in range(per_tick):
                spec = self.specs[self.emitted % len(self.specs)]
                self.gw.emit(spec.kind, spec.source, spec.data)
                self.emitted += 1
            next_at += tick
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.5:
                next_at = time.monotonic()  # fell far behind: do not burst to catch up

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)
        self.seconds = time.monotonic() - self.started
        self.achieved = self.emitted / self.seconds


def fsync_probe_ms(directory: Path, n: int) -> list[float]:
    """What one 4 KiB write + fdatasync costs on the outbox's disk right now (alarms pay it)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    out = []
    try:
        for _ in range(n):
            os.write(fd, b"\0" * 4096)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.005)
    finally:
        os.close(fd)
        path.unlink()
    return out


def node_encode_us() -> float:
    """Microseconds the firmware spends encoding its alarm frame (unix port), before its stamp."""
    script = (
        "import time, node_protocol as np\n"
        f"f = {{'sensor': 0, 'cause': {SENSOR['kind']!r}, 'value': 100,"
        f" 'name': {SENSOR['name']!r}}}\n"
        "n = 2000\n"
        "t = time.ticks_us()\n"
        "for i in range(n):\n"
        "    np.encode(np.Message(np.ALARM, 7, i & 255, f))\n"
        "print(time.ticks_diff(time.ticks_us(), t) / n)\n"
    )
    out = subprocess.run(
        [micropython_binary(), "-c", script],
        env=dict(os.environ, MICROPYPATH=str(PROTOCOL_DIR)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return math.nan


def gateway_config(workdir: Path, broker: MosquittoBroker, links: dict[str, Path], params: Params):
    ports = [
        {
            "name": f"nodes-{label}",
            "path": str(link),
            "protocol": "node",
            "nodes": [int(label[1:])],
            "silent_after_s": 5,
        }
        for label, link in links.items()
    ]
    return config_mod.from_dict(
        {
            "gateway": {
                "id": GATEWAY_ID,
                "district": "d01",
                "ward": "w01",
                "site_type": "fire_point",
            },
            "uplink": {
                "host": broker.host,
                "port": broker.port,
                "backoff_initial_s": 0.1,
                "backoff_max_s": 0.5,
            },
            "outbox": {"path": str(workdir / "outbox.sqlite3"), "fsync": params.outbox_fsync},
            "health": {"heartbeat_s": 1},
            "alarm_ack": {"enabled": params.alarm_ack != "off"},
            "serial": {"ports": ports},
        }
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@dataclass
class RunResult:
    direct: PathResult
    pty: PathResult
    paced: PathResult
    load_rate: float
    load_seconds: float
    delivered: dict[str, int]
    seconds: float
    acked: int
    alarms_emitted: int
    unexpected_alarms: int
    heartbeats: int
    node_frames: dict[str, int]
    node_crc_errors: dict[str, int]
    decoder: dict[str, Any]
    relay: dict[str, Any]
    cpu_percent: dict[str, float]
    rss_mb: float
    realtime_nodes: bool


def run(workdir: Path, broker: MosquittoBroker, params: Params) -> RunResult:
    links = {"n07": workdir / "by-id" / "node07", "n08": workdir / "by-id" / "node08-paced"}
    node7 = UnixNode(node_config(7), link=links["n07"], workdir=workdir / "n07")
    node8 = UnixNode(node_config(8), workdir=workdir / "n08")  # reached only through the relay
    (workdir / "n07").mkdir()
    (workdir / "n08").mkdir()
    sub = Subscriber(broker, acknowledge=params.alarm_ack == "ack")
    line: PacedLine | None = None
    gw: Gateway | None = None
    load: Load | None = None
    samplers: dict[str, RssSampler] = {}
    relay: dict[str, Any] = {}
    try:
        node7.plug()
        node8.plug()
        pids = [n.proc.pid for n in (node7, node8) if n.proc is not None]
        realtime_nodes = all([hardware_priority(pid) for pid in pids])
        assert node8.port is not None
        line = PacedLine(node8.port, links["n08"], params.baud)
        gw = Gateway(gateway_config(workdir, broker, links, params))
        emits = timed_emits(gw)
        gw.start()
        wait_until(lambda: gw.uplink.connected, 10, "the gateway's MQTT connection")
        pipes = {f"n{n:02d}": p for p in gw.pipelines for n in getattr(p, "nodes", {})}
        for label, pipe in pipes.items():
            wait_until(
                lambda p=pipe, n=int(label[1:]): p.nodes[n].boot_id is not None,
                10,
                f"the hello from {label}",
            )
        node7.release_port()  # the gateway holds the ports now; so does the relay
        node8.release_port()
        rig = Rig(gw, sub, {"n07": node7, "n08": node8}, emits)
        procs = {
            "gateway + bench": os.getpid(),
            "node n07 (micropython)": node7.proc.pid,  # type: ignore[union-attr]
            "node n08 (micropython)": node8.proc.pid,  # type: ignore[union-attr]
            "paced line relay": line.proc.pid,
            "mosquitto": broker.proc.pid,  # type: ignore[union-attr]
            "subscriber": sub.proc.pid,
        }
        samplers = {name: RssSampler(pid, interval_s=0.5) for name, pid in procs.items()}
        counts_before = sub.counts()
        load = Load(gw, params.load_rate).start()
        time.sleep(params.warmup_s)
        for s in samplers.values():
            s.start()
        direct = PathResult("direct")
        pty = PathResult("n07")
        paced = PathResult("n08")
        steps: list[Callable[[], None]] = [
            lambda: direct_alarm(rig, direct),
            lambda: node_alarm(rig, "n07", pty),
            lambda: node_alarm(rig, "n08", paced),
        ]
        rng = random.Random(3)
        started = time.monotonic()
        for _ in range(params.rounds):
            rng.shuffle(steps)
            for step in steps:
                time.sleep(params.spacing_s * rng.uniform(0.5, 1.5))
                step()
        seconds = time.monotonic() - started
        load.stop()
        for s in samplers.values():
            s.stop()
        counts_after = sub.counts()
        expected = sum(len(r.latencies_ms) for r in (direct, pty, paced))
        ack = gw.ack_supervisor
        if ack is not None and params.alarm_ack == "ack":
            wait_until(lambda: ack.acked >= expected, 10, "the subscriber's acks")
        status = {name: p.status() for name, p in ((p.name, p) for p in gw.pipelines)}
        node_status = {
            label: s["nodes"][label] for s in status.values() for label in s.get("nodes", {})
        }
        decoder = {name: s["decoder"] for name, s in status.items() if "decoder" in s}
        delivered = {
            k: counts_after.get(k, 0) - counts_before.get(k, 0)
            for k in set(counts_after) | set(counts_before)
        }
        rss = max(samplers["gateway + bench"].rss(), default=0)
        return RunResult(
            direct=direct,
            pty=pty,
            paced=paced,
            load_rate=load.achieved,
            load_seconds=load.seconds,
            delivered=delivered,
            seconds=seconds,
            acked=ack.acked if ack is not None else -1,
            alarms_emitted=len(emits),
            unexpected_alarms=len(sub.alarms) - expected,
            heartbeats=delivered.get("heartbeat", 0),
            node_frames={k: v["frames"] for k, v in node_status.items()},
            node_crc_errors={k: v["node_crc_errors"] for k, v in node_status.items()},
            decoder=decoder,
            relay=relay,
            cpu_percent={name: s.cpu_percent() for name, s in samplers.items()},
            realtime_nodes=realtime_nodes,
            rss_mb=mb(rss),
        )
    finally:
        if load is not None and load.thread.is_alive():
            load.stop()
        for s in samplers.values():
            with contextlib.suppress(RuntimeError):
                s.stop()
        if gw is not None:
            gw.stop()
        if line is not None:
            relay.update(line.stop())
        node7.close()
        node8.close()
        sub.stop()


# --- report --------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _dist(values: list[float], offset: float = 0.0) -> list[str]:
    return [fmt(percentile(values, q) + offset, 2) for q in (50, 99, 100)]


def stamp_vs_wire_us(raw: list[tuple[int, ...]], reads: list[tuple[int, int]]) -> list[float]:
    """Firmware edge stamp - relay's read of the same alarm frame (matched by seq and time)."""
    out = []
    for row in raw:
        edge, seq = row[1], row[5]
        near = [t for s, t in reads if s == seq and abs(t - edge) < 50_000_000]
        if near:
            out.append((edge - min(near, key=lambda t: abs(t - edge))) / 1000)
    return out


def report(res: RunResult, params: Params, frame_sizes: list[int], encode_us: float) -> dict:
    frame = max(frame_sizes)
    wire = wire_ms(frame, params.baud)
    target = wire + TARGET_OVER_WIRE_MS
    base = res.direct
    pty_ok = res.pty.p(99) + wire <= target and not res.pty.missing
    paced_ok = res.paced.p(99) <= target and not res.paced.missing

    def ratios(r: PathResult, offset: float = 0.0) -> str:
        p50 = ratio(r.p(50) + offset, base.p(50))
        p99 = ratio(r.p(99) + offset, base.p(99))
        return f"{fmt(p50, 2)}/{fmt(p99, 2)}"

    def n(r: PathResult) -> str:
        return f"{len(r.latencies_ms)}/{len(r.latencies_ms) + r.missing}"

    rows = [
        [
            "baseline: Gateway.emit() call -> subscriber",
            n(base),
            *_dist(base.latencies_ms),
            "1.00/1.00",
            "",
            "",
        ],
        [
            "n07 on a pty: firmware edge -> subscriber",
            n(res.pty),
            *_dist(res.pty.latencies_ms),
            ratios(res.pty),
            "",
            "",
        ],
        [
            f"  + computed wire time ({wire:.2f} ms)",
            "",
            *_dist(res.pty.latencies_ms, wire),
            ratios(res.pty, wire),
            f"<= {target:.2f}",
            verdict(pty_ok),
        ],
        [
            f"n08 on a {params.baud}-paced pty: edge -> subscriber",
            n(res.paced),
            *_dist(res.paced.latencies_ms),
            ratios(res.paced),
            f"<= {target:.2f}",
            verdict(paced_ok),
        ],
    ]
    nodes = (res.pty, res.paced)
    parts = [
        ["n07 edge -> the serial driver calls emit()", *_dist(res.pty.to_emit_ms)],
        ["n08 edge -> the serial driver calls emit() (incl. wire)", *_dist(res.paced.to_emit_ms)],
        ["emit() call (outbox commit), node alarms", *_dist(sum((r.emit_ms for r in nodes), []))],
        ["emit() call (outbox commit), baseline", *_dist(base.emit_ms)],
        [
            "emit() returned -> receipt, node alarms",
            *_dist(sum((r.after_emit_ms for r in nodes), [])),
        ],
        ["emit() returned -> receipt, baseline", *_dist(base.after_emit_ms)],
        [
            f"not counted: press -> edge (sampled every {SAMPLE_MS} ms)",
            *_dist(sum((r.press_to_edge_ms for r in nodes), [])),
        ],
    ]
    print()
    print_table(
        ["fire alarm latency (ms)", "received", "p50", "p99", "max", "ratio p50/p99", "target", ""],
        rows,
    )
    print()
    print_table(["where the time goes (ms)", "p50", "p99", "max"], parts)
    print()
    sizes = "-".join(str(s) for s in sorted({frame_sizes[0], frame_sizes[-1]}))
    print(
        f"alarm frame: {sizes} B with COBS/CRC (per sequence number); wire time of {frame} B "
        f"at {params.baud} 8N1 = {frame} x {BITS_PER_BYTE} / {params.baud} = {wire:.2f} ms"
    )
    print(
        "a pty has no baud rate: n07's wire time is computed and added; n08's line is paced "
        "by a relay process (each chunk delivered when its last byte would have arrived)"
    )
    late = res.relay.get("late_us", {})
    if res.relay:
        how = "SCHED_FIFO" if res.relay.get("realtime") else "normal priority (no SCHED_FIFO)"
        print(f"  the relay ran at {how}")
    for direction, values in late.items():
        if values:
            print(
                f"  paced line {direction}: {len(values)} chunks, "
                f"{res.relay['bytes'].get(direction, 0):,} B, delivered late by p50 "
                f"{percentile(values, 50):.0f} us, p99 {percentile(values, 99):.0f} us, "
                f"max {max(values):.0f} us"
            )
    print(
        f"the firmware stamps its edge after encoding and writing the frame; encoding takes "
        f"{encode_us:.0f} us on the unix port (not in the numbers above); node processes at "
        + ("SCHED_FIFO" if res.realtime_nodes else "normal priority (stamps may come late)")
    )
    early = {r.name: sum(0 < x[2] < x[1] for x in r.raw) for r in (res.pty, res.paced)}
    stamp_us = stamp_vs_wire_us(res.paced.raw, res.relay.get("alarm_reads", []))
    if stamp_us:
        print(
            f"check of the edge stamp: n08's stamp minus the moment its alarm frame left the "
            f"node's pty (seen by the relay): p50 {percentile(stamp_us, 50):.0f} us, min "
            f"{min(stamp_us):.0f} us, max {max(stamp_us):.0f} us ({len(stamp_us)} alarms); "
            f"gateway called emit() before the node's stamp: "
            + ", ".join(f"{k} {v}x" for k, v in early.items())
        )
    print(
        "baseline = the same gateway's emit() called by the bench, interleaved with the node "
        "alarms under the same load; ratios are against its p50/p99"
    )
    load = res.delivered.get("reading", 0) + res.delivered.get("tele", 0) - res.heartbeats
    print(
        f"background load: {res.load_rate:,.0f} ev/s emitted, {load / res.load_seconds:,.0f} ev/s "
        f"reaching the subscriber; gateway heartbeats received: {res.heartbeats} in "
        f"{res.load_seconds:.0f} s; frames from the nodes: "
        + ", ".join(f"{k} {v}" for k, v in sorted(res.node_frames.items()))
    )
    print(
        f"alarms emitted {res.alarms_emitted}, acknowledged by the subscriber {res.acked}, "
        f"unexpected at the subscriber {res.unexpected_alarms}; fault events "
        f"{res.delivered.get('fault', 0)} (a transmission or node fault would be one)"
    )
    print(
        "CPU (% of one core) during the rounds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in res.cpu_percent.items())
        + f"; gateway + bench process RSS peak {res.rss_mb:.0f} MB"
    )
    notes = []
    for r in (res.pty, res.paced, base):
        if r.missing:
            notes.append(f"{r.name}: {r.missing} alarms never reached the subscriber")
        if r.reset_failures:
            notes.append(f"{r.name}: sensor_reset failed {r.reset_failures} times")
    if res.unexpected_alarms:
        notes.append(f"{res.unexpected_alarms} alarms arrived that no round asked for")
    for name, counters in res.decoder.items():
        bad = {k: v for k, v in counters.items() if k != "frames" and v}
        if bad:
            notes.append(f"{name} decoder: {bad}")
    for note in notes:
        print(f"note: {note}")
    return {
        "wire_ms": wire,
        "frame_bytes": frame_sizes,
        "target_ms": target,
        "encode_us": encode_us,
        "pass": {"pty_plus_wire": pty_ok, "paced": paced_ok},
        **{
            key: {**asdict(r), "p50": r.p(50), "p99": r.p(99), "max": r.p(100)}
            for key, r in (("direct", base), ("pty", res.pty), ("paced", res.paced))
        },
        "run": {
            k: v for k, v in asdict(res).items() if k not in ("direct", "pty", "paced", "relay")
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 15 s")
    parser.add_argument("--rounds", type=int, help="alarms per path (>= 200 for a p99)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, outbox)")
    parser.add_argument(
        "--outbox-fsync",
        choices=["critical", "full", "normal"],
        help="the outbox's fsync setting (default: critical, as the gateway); an experiment knob",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        metavar="MS",
        help="set sys.setswitchinterval() in the gateway's process (experiment knob)",
    )
    parser.add_argument(
        "--alarm-ack",
        choices=["ack", "silent", "off"],
        help="ack (default): supervision on, the subscriber acknowledges each alarm; silent: it "
        "never does; off: alarm_ack.enabled = false (experiment knobs)",
    )
    args = parser.parse_args(argv)
    params = QUICK if args.quick else Params()
    if args.rounds:
        params = Params(**{**asdict(params), "rounds": args.rounds})
    if args.outbox_fsync:
        params = Params(**{**asdict(params), "outbox_fsync": args.outbox_fsync})
    if args.alarm_ack:
        params = Params(**{**asdict(params), "alarm_ack": args.alarm_ack})
    if args.switch_interval:
        params = Params(**{**asdict(params), "switch_interval_ms": args.switch_interval})
        sys.setswitchinterval(args.switch_interval / 1000)

    with work_dir("wardgate-bench-fire-", "bench-gateway.log", args.keep) as workdir:
        mosquitto = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout
        micropython = subprocess.run(
            [micropython_binary(), "-c", "import sys; print(sys.version)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"wardgate fire-path benchmark ({'quick' if args.quick else 'full'})")
        print(f"machine: {machine_summary()}; loopback; {mosquitto.splitlines()[0]}")
        print(f"node firmware on the MicroPython unix port ({micropython})")
        print(f"work dir (outbox on disk): {workdir}")
        print(f"load average before: {loadavg()}")
        sync = fsync_probe_ms(workdir, 100)
        print(
            f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms; "
            f"alarm acknowledgement: {params.alarm_ack}; "
            f"outbox fsync = {params.outbox_fsync!r}; this disk's fdatasync before the run: p50 "
            f"{percentile(sync, 50):.2f} ms, p99 {percentile(sync, 99):.2f} ms, "
            f"max {max(sync):.2f} ms"
        )
        frame_sizes = alarm_frame_sizes()
        encode_us = node_encode_us()
        broker = MosquittoBroker(workdir / "broker", persistence=False)
        broker.start()
        started = time.monotonic()
        try:
            print(
                f"{params.rounds} rounds of 3 alarms (direct emit, n07 pty, n08 paced) under "
                f"{params.load_rate} ev/s ..."
            )
            result = run(workdir, broker, params)
            results = report(result, params, frame_sizes, encode_us)
            finish_run(started, results, args.json)
            if args.quick:
                print("(--quick: smoke run with small samples; numbers are not representative)")
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
