"""Uplink benchmark (issue 2): alarm latency under load, backlog drain rate, gateway RSS.

    .venv/bin/python bench/uplink.py            # full run, about 2 min 15 s
    .venv/bin/python bench/uplink.py --quick    # smoke run, about 10 s (keeps it from rotting)

Everything runs against one private Mosquitto (devtools.devbroker, plain listener, anonymous,
persistence on so that the subscriber's session survives the outage, but saved only at shutdown
so that its periodic disk writes do not stall the broker mid-measurement). Each wardgate number is
printed next to a baseline measured in the same run on the same broker:

1. Alarm latency: time from just before `Gateway.emit(alarm)` (which returns once the alarm is
   committed to the SQLite outbox) to its arrival at a QoS 1 subscriber, while a second thread
   emits ~1,000 readings/telemetry per second through the same gateway. Baseline: one plain paho
   client (loop_start, same in-flight window) publishing the same payloads, load and alarms, at
   QoS 1 straight to the broker. The subscriber is a separate process (spawned, so it does not
   compete for the bench's GIL); both sides stamp with time.monotonic_ns(), i.e. CLOCK_MONOTONIC,
   which is one clock for every process on the machine.
2. Drain rate: the broker is stopped, the running gateway commits a backlog (50,000 events of the
   size mix below) to its outbox, the broker is started; rate = backlog / (time from the gateway's
   reconnect to the subscriber holding the whole backlog). The reconnect delay (backoff with
   jitter, here capped at 0.5 s) is reported separately. Baseline: a plain paho QoS 1 publish
   loop of the same payloads (pre-encoded) on a connected client, timed from the first publish
   to the subscriber holding them all.
3. RSS: `python -m edge.cli run --config ...` as its own process (uplink, runtime, heartbeat every
   second, the synthetic test source emitting readings on a 0.7 ms timer (~1,000/s) plus a test
   alarm per second), sampled with psutil every 100 ms through warm-up, steady load, a 5 s broker
   outage and the recovery. Context: the RSS of a bare `python -c "import paho.mqtt.client"`.

Targets (issue 2): alarm p99 <= 20 ms on loopback; drain >= 3,000 events/s; RSS <= 60 MB.
PASS/MISS is printed; the exit status is 0 either way (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench` and `edge` importable
    sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
import psutil  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from bench.common import (  # noqa: E402
    RssSampler,
    finish_run,
    fmt,
    loadavg,
    machine_summary,
    mb,
    median,
    percentile,
    print_table,
    ratio,
    work_dir,
)
from devtools.devbroker import MOSQUITTO, MosquittoBroker  # noqa: E402
from edge import config as config_mod  # noqa: E402
from edge.runtime import Gateway  # noqa: E402
from protocol.events import Event, Kind  # noqa: E402
from protocol.topics import GatewayTopics  # noqa: E402

TARGET_P99_MS = 20.0
TARGET_DRAIN_PER_S = 3000.0
TARGET_RSS_MB = 60.0
TARGET_DRAIN_RATIO = 0.9  # issue 8: drain at least 0.9x a plain paho publisher's rate
PLAIN_QUEUE_BOUND = 20_000  # messages a baseline publisher keeps queued in paho (< 65,535 ids)
DISTRICT, WARD = "d01", "w01"


@dataclass(frozen=True)
class Params:
    alarms: int = 300
    alarm_spacing_s: float = 0.04  # mean; uniform in [0.5, 1.5] x this, so not in step with load
    load_rate: int = 1000
    warmup_s: float = 1.0
    backlog: int = 50_000
    rss_warmup_s: float = 3.0
    rss_steady_s: float = 12.0
    rss_outage_s: float = 5.0


QUICK = Params(
    alarms=30,
    alarm_spacing_s=0.02,
    warmup_s=0.3,
    backlog=3000,
    rss_warmup_s=1.0,
    rss_steady_s=2.0,
    rss_outage_s=0.0,
)


# --- payloads ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    kind: Kind
    source: str
    data: dict[str, Any]


def _telemetry(rng: random.Random, i: int) -> dict[str, Any]:
    """Shaped like the heartbeat (edge.health.Heartbeat.snapshot)."""
    return {
        "uptime_s": i,
        "load1": round(rng.uniform(0, 2), 2),
        "mem_avail_mb": rng.randrange(200, 900),
        "rss_mb": rng.randrange(30, 45),
        "disk_free_mb": rng.randrange(5000, 9000),
        "outbox": {"critical": 0, "events": rng.randrange(100), "bulk": rng.randrange(100)},
        "evicted": {"critical": 0, "events": 0, "bulk": 0},
        "uplink": {"connected": True, "connections": 1, "sent": i, "acked": i},
    }


def make_specs(n: int, seed: int, *, alarms: bool) -> list[Spec]:
    """Readings 75-80 %, telemetry 20 %; with `alarms`, also person events 4 % and alarms 1 %."""
    rng = random.Random(seed)
    out: list[Spec] = []
    for i in range(n):
        r = rng.random()
        if alarms and r < 0.01:
            out.append(Spec(Kind.ALARM, f"n{i % 40:02d}/smoke", {"cause": "smoke", "value": 82}))
        elif alarms and r < 0.05:
            out.append(
                Spec(Kind.PERSON, "cam/gate", {"track": i, "score": 0.91, "zone": "yard"}),
            )
        elif r < 0.80:
            value = round(rng.uniform(15, 35), 2)
            out.append(Spec(Kind.READING, f"n{i % 40:02d}/heat", {"value": value, "unit": "C"}))
        else:
            out.append(Spec(Kind.TELEMETRY, "gateway", _telemetry(rng, i)))
    return out


def topics_for(gateway_id: str) -> GatewayTopics:
    return GatewayTopics("wg/v1", DISTRICT, WARD, gateway_id)


# --- the subscriber (its own process) ------------------------------------------------------------
def _subscriber_main(conn: Any, host: str, port: int) -> None:
    """A backend-like QoS 1 subscriber on wg/# with a persistent session; answers over `conn`."""
    from protocol.events import decode

    lock = threading.Lock()
    counts: Counter[str] = Counter()
    alarm_ns: dict[str, int] = {}
    span: list[int | None] = [None, None]  # first, last receipt of an event (evt/* or tele)
    last_tele: dict[str, bytes] = {}
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe("wg/#", qos=1)

    def on_subscribe(*args) -> None:
        subscribed.set()

    def on_message(client, userdata, msg) -> None:
        now = time.monotonic_ns()
        topic = msg.topic
        alarm_id = decode(msg.payload).id.hex() if topic.endswith("/evt/alarm") else None
        with lock:
            counts[topic] += 1
            if "/evt/" in topic or topic.endswith("/tele"):
                if span[0] is None:
                    span[0] = now
                span[1] = now
            if alarm_id is not None:
                alarm_ns.setdefault(alarm_id, now)  # first receipt; QoS 1 may repeat
            if topic.endswith("/tele"):
                last_tele[topic] = msg.payload

    # the baseline subscriber: plain paho on purpose (not protocol/mqtt.py's policy), with
    # paho's own fast reconnect, so the measuring side never changes with the policy
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id="bench-subscriber",
        protocol=mqtt.MQTTv5,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.reconnect_delay_set(0.02, 0.05)  # back quickly after the outage
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect(host, port, keepalive=10, clean_start=False, properties=props)
    client.loop_start()
    conn.send("ready" if subscribed.wait(20) else "not subscribed")
    while True:
        request = conn.recv()
        if request[0] == "stop":
            break
        if request[0] == "snapshot":
            with lock:
                conn.send(
                    {
                        "counts": dict(counts),
                        "alarm_ns": dict(alarm_ns),
                        "first_ns": span[0],
                        "last_ns": span[1],
                        "tele": dict(last_tele),
                        "connected": client.is_connected(),
                    }
                )
                if request[1]:  # reset
                    counts.clear()
                    alarm_ns.clear()
                    span[0] = span[1] = None
                    last_tele.clear()
    client.loop_stop()
    client.disconnect()


class Subscriber:
    def __init__(self, broker: MosquittoBroker) -> None:
        ctx = multiprocessing.get_context("spawn")  # the bench has threads: no fork
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_subscriber_main, args=(child, broker.host, broker.port), daemon=True
        )
        self.proc.start()
        answer = self.conn.recv() if self.conn.poll(30) else "no answer in 30 s"
        if answer != "ready":
            raise RuntimeError(f"the bench subscriber did not come up: {answer}")

    def snapshot(self, reset: bool = False) -> dict[str, Any]:
        self.conn.send(("snapshot", reset))
        return self.conn.recv()

    @staticmethod
    def events_under(snap: dict[str, Any], topics: GatewayTopics) -> int:
        prefix = topics.base + "/"
        return sum(
            n
            for t, n in snap["counts"].items()
            if t.startswith(prefix) and ("/evt/" in t or t.endswith("/tele"))
        )

    def wait(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, poll_s: float = 0.05
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if predicate(snap) or time.monotonic() > deadline:
                return snap
            time.sleep(poll_s)

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            self.conn.send(("stop",))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


# --- helpers -------------------------------------------------------------------------------------
def gateway_toml(
    workdir: Path,
    broker: MosquittoBroker,
    gateway_id: str,
    *,
    heartbeat_s: float,
    test_source: str = "",
    log_level: str = "info",
) -> Path:
    """A gateway config on defaults except: anonymous plain listener, short reconnect backoff."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.toml"
    path.write_text(
        f"""\
[gateway]
id = "{gateway_id}"
district = "{DISTRICT}"
ward = "{WARD}"

[uplink]
host = "{broker.host}"
port = {broker.port}
backoff_initial_s = 0.1
backoff_max_s = 0.5

[outbox]
path = "{workdir / "outbox.sqlite3"}"

[health]
heartbeat_s = {heartbeat_s}

[logging]
level = "{log_level}"
{test_source}
"""
    )
    return path


def plain_client(broker: MosquittoBroker, client_id: str, max_inflight: int) -> mqtt.Client:
    """The baseline: an ordinary paho QoS 1 publisher (loop_start), same in-flight window.
    Plain paho on purpose, not protocol/mqtt.py's policy: it is what the uplink is measured
    against."""
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(max_inflight)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"{client_id}: no connection to the broker")
    return client


def wait_until(predicate: Callable[[], bool], timeout: float, poll_s: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


# --- 1. alarm latency under load -----------------------------------------------------------------
@dataclass
class LatencyResult:
    latencies_ms: list[float]
    missing: int
    load_rate: float  # background events/s actually emitted
    emit_ms: list[float] = field(default_factory=list)  # emit() call duration (durable commit)
    commands_sent: int = 0  # with a command flood running
    commands_answered: int = 0
    after_emit_ms: list[float] = field(default_factory=list)  # emit() returned -> received

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def measure_latency(
    emit_alarm: Callable[[int], str],
    emit_load: Callable[[Spec], None],
    sub: Subscriber,
    params: Params,
) -> LatencyResult:
    specs = make_specs(5000, seed=11, alarms=False)
    stop = threading.Event()
    emitted = [0]

    def load() -> None:
        tick = 0.01  # 10 events every 10 ms: time.sleep cannot pace single events at 1 ms
        per_tick = max(1, round(params.load_rate * tick))
        next_at = time.monotonic()
        i = 0
        while not stop.is_set():
            for _ in range(per_tick):
                emit_load(specs[i % len(specs)])
                i += 1
            next_at += tick
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.5:
                next_at = time.monotonic()  # fell far behind: do not burst to catch up
        emitted[0] = i

    sub.snapshot(reset=True)
    loader = threading.Thread(target=load, name="bench-load", daemon=True)
    load_started = time.monotonic()
    loader.start()
    time.sleep(params.warmup_s)
    rng = random.Random(7)
    sent: dict[str, tuple[int, int]] = {}  # id -> (before emit, after emit)
    for i in range(params.alarms):
        time.sleep(params.alarm_spacing_s * rng.uniform(0.5, 1.5))
        t0 = time.monotonic_ns()
        alarm_id = emit_alarm(i)
        sent[alarm_id] = (t0, time.monotonic_ns())
    snap = sub.wait(lambda s: set(sent) <= set(s["alarm_ns"]), timeout=15)
    stop.set()
    loader.join(10)
    load_rate = emitted[0] / (time.monotonic() - load_started)
    got = snap["alarm_ns"]
    arrived = [(t0, t1, got[a]) for a, (t0, t1) in sent.items() if a in got]
    return LatencyResult(
        latencies_ms=[(t2 - t0) / 1e6 for t0, _, t2 in arrived],
        missing=len(sent) - len(arrived),
        load_rate=load_rate,
        emit_ms=[(t1 - t0) / 1e6 for t0, t1, _ in arrived],
        after_emit_ms=[(t2 - t1) / 1e6 for _, t1, t2 in arrived],
    )


def latency_wardgate(
    workdir: Path, broker: MosquittoBroker, sub: Subscriber, params: Params, flood: bool = False
):
    """Alarm latency through a Gateway; with `flood`, while an operator client floods it with
    commands (FLOOD_RATE/s, every FLOOD_RELOAD_EVERY-th a `reload`) and a receiver acks."""
    name = "bench-lat-flood" if flood else "bench-lat"
    path = gateway_toml(workdir / name, broker, name, heartbeat_s=5)
    gw = Gateway(config_mod.load(path), config_path=path)
    gw.start()
    flooder = None
    try:
        if not wait_until(lambda: gw.uplink.connected, 10):
            raise RuntimeError("gateway did not connect to the bench broker")
        if flood:
            flooder = CommandFlood(broker, topics_for(name))

        def emit_load(spec: Spec) -> None:
            gw.emit(spec.kind, spec.source, spec.data)

        def emit_alarm(i: int) -> str:
            event = gw.emit(Kind.ALARM, f"n{i % 40:02d}/smoke", {"cause": "smoke", "value": 82})
            return event.id_hex

        result = measure_latency(emit_alarm, emit_load, sub, params)
        if flooder is not None:
            flooder.stop()
            result.commands_sent = flooder.sent
            result.commands_answered = flooder.answered
        return result, gw.config.uplink.max_inflight
    finally:
        if flooder is not None:
            flooder.stop()
        gw.stop()


FLOOD_RATE = 200  # commands per second
FLOOD_RELOAD_EVERY = 20  # every 20th command is a `reload` (~0.1-0.8 s of work each)
FLOOD_COMMAND = "status"  # the rest: a status request (the heaviest read-only command)


def _flood_main(conn: Any, host: str, port: int, gateway: str, knobs: tuple) -> None:
    """The operator's process: commands at `rate`/s to one gateway, an ack for every alarm."""
    from protocol.events import decode

    rate, reload_every, command = knobs
    topics = topics_for(gateway)
    answered = [0]
    # plain paho on purpose (not the policy, which adds TCP_NODELAY): the flood numbers in
    # docs/performance.md were measured with this operator
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"{gateway}-operator",
        protocol=mqtt.MQTTv5,
    )

    def on_message(client, userdata, msg) -> None:
        if msg.topic == topics.cmd_res:
            answered[0] += 1
        elif msg.topic.endswith("/evt/alarm"):
            ack = json.dumps({"id": decode(msg.payload).id_hex, "by": "bench"}).encode()
            client.publish(topics.ack, ack, qos=1)

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: c.subscribe(
        [(topics.cmd_res, 1), (topics.event(Kind.ALARM), 1)]
    )
    client.connect(host, port, keepalive=30)
    client.loop_start()
    conn.send("ready" if subscribed.wait(20) else "not subscribed")
    sent = 0
    next_at = time.monotonic()
    while not conn.poll():
        name = "reload" if sent % reload_every == reload_every - 1 else command
        client.publish(topics.cmd(name), json.dumps({"id": sent}).encode(), qos=1)
        sent += 1
        next_at += 1 / rate
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(0.5)  # the last replies
    conn.send((sent, answered[0]))
    client.loop_stop()
    client.disconnect()


class CommandFlood:
    """An operator in its own process (as in the field: it must not compete with the gateway
    for the bench's GIL) publishing FLOOD_RATE commands/s to one gateway, every
    FLOOD_RELOAD_EVERY-th a `reload`, and acknowledging every alarm it sees, as a receiver does:
    acks and commands reach the gateway on the same link."""

    def __init__(self, broker: MosquittoBroker, topics: GatewayTopics) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        knobs = (FLOOD_RATE, FLOOD_RELOAD_EVERY, FLOOD_COMMAND)
        self.proc = ctx.Process(
            target=_flood_main,
            args=(child, broker.host, broker.port, topics.gateway, knobs),
            daemon=True,
        )
        self.proc.start()
        answer = self.conn.recv() if self.conn.poll(30) else "no answer in 30 s"
        if answer != "ready":
            raise RuntimeError(f"the bench operator did not come up: {answer}")
        self.sent = self.answered = 0
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            self.conn.send("stop")
            if self.conn.poll(10):
                self.sent, self.answered = self.conn.recv()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def latency_plain(broker: MosquittoBroker, sub: Subscriber, params: Params, max_inflight: int):
    topics = topics_for("bench-plain")
    client = plain_client(broker, "bench-plain", max_inflight)
    seq = itertools.count(1)
    try:

        def emit_load(spec: Spec) -> None:
            event = Event(spec.kind, spec.source, spec.data, gateway="bench-plain", seq=next(seq))
            client.publish(topics.event(spec.kind), event.encode(), qos=1)

        def emit_alarm(i: int) -> str:
            event = Event(
                Kind.ALARM,
                f"n{i % 40:02d}/smoke",
                {"cause": "smoke", "value": 82},
                gateway="bench-plain",
                seq=next(seq),
            )
            client.publish(topics.event(Kind.ALARM), event.encode(), qos=1)
            return event.id_hex

        return measure_latency(emit_alarm, emit_load, sub, params)
    finally:
        client.loop_stop()
        client.disconnect()


# --- 2. drain rate after an outage ---------------------------------------------------------------
@dataclass
class DrainResult:
    events: int
    seconds: float  # reconnect (or first publish) -> subscriber holds all
    reconnect_s: float = math.nan  # broker listening -> gateway connected
    fill_rate: float = math.nan  # emit() rate into the outbox while the broker was down
    complete: bool = True
    mean_payload: float = math.nan

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan

    @property
    def rate_from_broker_up(self) -> float:
        return self.events / (self.seconds + self.reconnect_s)


def drain_wardgate(workdir: Path, broker: MosquittoBroker, sub: Subscriber, params: Params):
    specs = make_specs(params.backlog, seed=5, alarms=True)
    topics = topics_for("bench-drain")
    path = gateway_toml(workdir / "drain-gw", broker, "bench-drain", heartbeat_s=3600)
    broker.stop()
    gw = Gateway(config_mod.load(path), config_path=path)
    gw.start()  # running through the outage, retrying the connection
    try:
        t0 = time.monotonic()
        for spec in specs:
            gw.emit(spec.kind, spec.source, spec.data)
        fill_rate = len(specs) / (time.monotonic() - t0)
        time.sleep(0.3)
        backlog = len(gw.outbox)  # the specs plus the heartbeat emitted at start
        sub.snapshot(reset=True)
        broker.start()
        up_ns = time.monotonic_ns()
        if not wait_until(lambda: gw.uplink.connected, 10, poll_s=0.001):
            raise RuntimeError("gateway did not reconnect after the outage")
        connected_ns = time.monotonic_ns()
        snap = sub.wait(lambda s: Subscriber.events_under(s, topics) >= backlog, timeout=120)
        complete = Subscriber.events_under(snap, topics) >= backlog
        if not gw.uplink.wait_drained(10):
            complete = False
        return DrainResult(
            events=backlog,
            seconds=(snap["last_ns"] - connected_ns) / 1e9,
            reconnect_s=(connected_ns - up_ns) / 1e9,
            fill_rate=fill_rate,
            complete=complete,
        )
    finally:
        gw.stop()


def drain_plain(broker: MosquittoBroker, sub: Subscriber, params: Params, max_inflight: int):
    topics = topics_for("bench-plain-drain")
    messages = [
        (
            topics.event(s.kind),
            Event(s.kind, s.source, s.data, gateway="bench-plain-drain", seq=i + 1).encode(),
        )
        for i, s in enumerate(make_specs(params.backlog, seed=5, alarms=True))
    ]
    client = plain_client(broker, "bench-plain-drain", max_inflight)
    # paho keys its queued messages by message id: with more than 65,535 queued at once a new
    # message silently replaces an older one with the same id (a 200,000 backlog lost 134k of
    # them and the drain never completed). A real publisher bounds its queue, so does this one.
    room = threading.BoundedSemaphore(PLAIN_QUEUE_BOUND)
    client.on_publish = lambda *a: room.release()
    try:
        sub.snapshot(reset=True)
        start_ns = time.monotonic_ns()
        for topic, payload in messages:
            room.acquire()
            client.publish(topic, payload, qos=1)
        n = len(messages)
        snap = sub.wait(lambda s: Subscriber.events_under(s, topics) >= n, timeout=120)
        return DrainResult(
            events=n,
            seconds=(snap["last_ns"] - start_ns) / 1e9,
            complete=Subscriber.events_under(snap, topics) >= n,
            mean_payload=sum(len(p) for _, p in messages) / n,
        )
    finally:
        client.loop_stop()
        client.disconnect()


# --- 3. RSS of the gateway process ---------------------------------------------------------------
@dataclass
class RssResult:
    peak_mb: float
    steady_mb: float
    after_recovery_mb: float
    uss_mb: float
    cpu_percent: float  # mean over the run, % of one core
    delivered_rate: float  # events/s reaching the subscriber in the steady phase
    outbox_after: int | None
    heavy_libs: list[str]
    exit_code: int | None
    baseline_mb: float = math.nan


HEAVY_LIBS = ("numpy", "cv2", "litert", "tensorflow", "pymodbus", "cryptography")


def rss_gateway(workdir: Path, broker: MosquittoBroker, sub: Subscriber, params: Params):
    from protocol.events import decode

    topics = topics_for("bench-rss")
    test_source = "\n[test_source]\nenabled = true\ninterval_s = 0.0007\nalarm_every_s = 1.0\n"
    path = gateway_toml(
        workdir / "rss-gw", broker, "bench-rss", heartbeat_s=1, test_source=test_source
    )
    log_path = path.with_suffix(".log")
    sub.snapshot(reset=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "--config", str(path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    sampler = RssSampler(proc.pid, interval_s=0.1).start()
    try:
        sampler.mark("warmup")
        ok = sub.wait(lambda s: topics.state in s["counts"], timeout=20)
        if topics.state not in ok["counts"]:
            raise RuntimeError(f"gateway process did not come online; see {log_path}")
        time.sleep(params.rss_warmup_s)
        sampler.mark("steady")
        before = Subscriber.events_under(sub.snapshot(), topics)
        t0 = time.monotonic()
        time.sleep(params.rss_steady_s)
        delivered = (Subscriber.events_under(sub.snapshot(), topics) - before) / (
            time.monotonic() - t0
        )
        if params.rss_outage_s > 0:
            sampler.mark("outage")
            broker.stop()
            time.sleep(params.rss_outage_s)
            broker.start()
            sampler.mark("recovery")

            def drained(s: dict[str, Any]) -> bool:
                payload = s["tele"].get(topics.tele)
                return payload is not None and sum(decode(payload).data["outbox"].values()) == 0

            sub.snapshot(reset=True)  # forget heartbeats from before the outage
            sub.wait(drained, timeout=60, poll_s=0.2)
            time.sleep(2)
        payload = sub.snapshot()["tele"].get(topics.tele)
        outbox_after = sum(decode(payload).data["outbox"].values()) if payload else None
        gw = psutil.Process(proc.pid)
        uss = gw.memory_full_info().uss
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        heavy = sorted({lib for lib in HEAVY_LIBS if lib in maps})
        end_phase = sampler.phase
    finally:
        sampler.stop()
        proc.terminate()
        try:
            exit_code: int | None = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = None
    return RssResult(
        peak_mb=mb(sampler.peak()),
        steady_mb=mb(median(sampler.rss("steady"))),
        after_recovery_mb=mb(sampler.rss(end_phase)[-1]),
        uss_mb=mb(uss),
        cpu_percent=sampler.cpu_percent(),
        delivered_rate=delivered,
        outbox_after=outbox_after,
        heavy_libs=heavy,
        exit_code=exit_code,
        baseline_mb=bare_paho_rss_mb(),
    )


def bare_paho_rss_mb() -> float:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, paho.mqtt.client; print('ready', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.readline()
        p = psutil.Process(proc.pid)
        rss = 0
        for _ in range(5):
            rss = max(rss, p.memory_info().rss)
            time.sleep(0.05)
        proc.stdin.close()
        proc.wait(10)
        return mb(rss)
    finally:
        if proc.poll() is None:
            proc.kill()


# --- report --------------------------------------------------------------------------------------
def _p50_p99(values: list[float]) -> str:
    return f"{fmt(percentile(values, 50), 2)}/{fmt(percentile(values, 99), 2)}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _latency_cells(q: float, gw: LatencyResult, plain: LatencyResult) -> list[str]:
    """Wardgate's latency percentile q, the plain-paho baseline's and their ratio."""
    ours, theirs = gw.p(q), plain.p(q)
    return [fmt(ours, 2), fmt(theirs, 2), fmt(ratio(ours, theirs), 2)]


def _rss_row(label: str, rss_mb: float, baseline_mb: float) -> list[str]:
    return [
        label,
        fmt(rss_mb),
        fmt(baseline_mb),
        fmt(ratio(rss_mb, baseline_mb), 2),
        f"<= {TARGET_RSS_MB:g}",
        verdict(rss_mb <= TARGET_RSS_MB),
    ]


def report(
    lat_gw, lat_plain, lat_flood, drain_gw, drain_plain_, rss, params: Params, quick: bool
) -> dict:
    p99 = lat_gw.p(99)
    rows = [
        ["alarm latency p50 (ms)", *_latency_cells(50, lat_gw, lat_plain), "", ""],
        [
            "alarm latency p99 (ms)",
            *_latency_cells(99, lat_gw, lat_plain),
            f"<= {TARGET_P99_MS:g}",
            verdict(p99 <= TARGET_P99_MS and lat_gw.missing == 0),
        ],
        ["alarm latency max (ms)", *_latency_cells(100, lat_gw, lat_plain), "", ""],
        [
            "  alarms received / sent",
            f"{len(lat_gw.latencies_ms)}/{len(lat_gw.latencies_ms) + lat_gw.missing}",
            f"{len(lat_plain.latencies_ms)}/{len(lat_plain.latencies_ms) + lat_plain.missing}",
            "",
            "",
            "",
        ],
        [
            "  of which emit() call p50/p99 (ms)",
            _p50_p99(lat_gw.emit_ms),
            _p50_p99(lat_plain.emit_ms),
            "",
            "",
            "",
        ],
        [
            "  of which emit() return->receipt p50/p99",
            _p50_p99(lat_gw.after_emit_ms),
            _p50_p99(lat_plain.after_emit_ms),
            "",
            "",
            "",
        ],
        [
            "  background load achieved (ev/s)",
            fmt(lat_gw.load_rate, 0),
            fmt(lat_plain.load_rate, 0),
            "",
            f"~{params.load_rate}",
            "",
        ],
        [
            f"alarm p50 under {FLOOD_RATE} cmd/s (ms)",
            fmt(lat_flood.p(50), 2),
            fmt(lat_gw.p(50), 2),
            fmt(ratio(lat_flood.p(50), lat_gw.p(50)), 2),
            "",
            "",
        ],
        [
            f"alarm p99 under {FLOOD_RATE} cmd/s (ms)",
            fmt(lat_flood.p(99), 2),
            fmt(lat_gw.p(99), 2),
            fmt(ratio(lat_flood.p(99), lat_gw.p(99)), 2),
            f"<= {TARGET_P99_MS:g}",
            verdict(lat_flood.p(99) <= TARGET_P99_MS and lat_flood.missing == 0),
        ],
        [
            "  alarms received / sent; commands answered / sent",
            f"{len(lat_flood.latencies_ms)}/{len(lat_flood.latencies_ms) + lat_flood.missing}; "
            f"{lat_flood.commands_answered}/{lat_flood.commands_sent}",
            "",
            "",
            "",
            "",
        ],
        [
            f"drain {drain_gw.events:,} backlog (ev/s)",
            fmt(drain_gw.rate, 0),
            fmt(drain_plain_.rate, 0),
            fmt(ratio(drain_gw.rate, drain_plain_.rate), 2),
            f">= {TARGET_DRAIN_PER_S:,.0f}",
            verdict(drain_gw.rate >= TARGET_DRAIN_PER_S and drain_gw.complete),
        ],
        [
            "  drain ratio vs plain paho",
            "",
            "",
            fmt(ratio(drain_gw.rate, drain_plain_.rate), 2),
            f">= {TARGET_DRAIN_RATIO:g}",
            verdict(ratio(drain_gw.rate, drain_plain_.rate) >= TARGET_DRAIN_RATIO),
        ],
        [
            "  drain incl. reconnect (ev/s)",
            fmt(drain_gw.rate_from_broker_up, 0),
            "",
            "",
            "",
            "",
        ],
        ["  reconnect after broker up (s)", fmt(drain_gw.reconnect_s, 2), "", "", "", ""],
        ["  outbox fill, broker down (ev/s)", fmt(drain_gw.fill_rate, 0), "", "", "", ""],
        _rss_row("gateway RSS peak (MB)", rss.peak_mb, rss.baseline_mb),
        _rss_row("gateway RSS steady (MB)", rss.steady_mb, rss.baseline_mb),
        ["  RSS after recovery / USS (MB)", f"{rss.after_recovery_mb:.1f}/{rss.uss_mb:.1f}"]
        + [""] * 4,
        ["  gateway CPU (% of one core)", fmt(rss.cpu_percent, 0), "", "", "", ""],
        ["  delivered in steady phase (ev/s)", fmt(rss.delivered_rate, 0), "", "", "", ""],
    ]
    print()
    print_table(["metric", "wardgate", "baseline", "ratio", "target", ""], rows)
    print()
    print(
        "baselines: latency and drain = plain paho QoS 1 publisher (same payloads, same window);"
        " RSS = bare `python -c 'import paho.mqtt.client'`"
    )
    print(
        "emit() return->receipt may be negative: the alarm is already on the wire while emit()"
        " finishes (it also records the alarm for acknowledgement supervision)"
    )
    print(
        f"drain payloads: mean {drain_plain_.mean_payload:.0f} B CBOR "
        "(readings, heartbeat-like telemetry, person events, 1 % alarms)"
    )
    notes = []
    if lat_gw.missing or lat_plain.missing:
        notes.append(f"alarms lost: wardgate {lat_gw.missing}, plain {lat_plain.missing}")
    if not drain_gw.complete or not drain_plain_.complete:
        notes.append("a drain did not complete within its timeout")
    if rss.heavy_libs:
        notes.append(f"gateway process maps heavy libraries: {', '.join(rss.heavy_libs)}")
    if rss.outbox_after and rss.outbox_after > 500:
        notes.append(f"gateway outbox not empty after the RSS run: {rss.outbox_after}")
    if rss.exit_code not in (0, None):
        notes.append(f"gateway process exited with {rss.exit_code} on SIGTERM")
    for note in notes:
        print(f"note: {note}")
    if quick:
        print("(--quick: smoke run with small samples; numbers are not representative)")
    return {
        "latency": {
            "wardgate": {**asdict(lat_gw), "p50": lat_gw.p(50), "p99": p99},
            "plain": {**asdict(lat_plain), "p50": lat_plain.p(50), "p99": lat_plain.p(99)},
            "flood": {**asdict(lat_flood), "p50": lat_flood.p(50), "p99": lat_flood.p(99)},
        },
        "drain": {
            "wardgate": {**asdict(drain_gw), "rate": drain_gw.rate},
            "plain": {**asdict(drain_plain_), "rate": drain_plain_.rate},
        },
        "rss": asdict(rss),
        "targets": {
            "p99_ms": [TARGET_P99_MS, p99 <= TARGET_P99_MS],
            "drain_per_s": [TARGET_DRAIN_PER_S, drain_gw.rate >= TARGET_DRAIN_PER_S],
            "rss_mb": [TARGET_RSS_MB, rss.peak_mb <= TARGET_RSS_MB],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--alarms", type=int, help="alarms per latency run (>= 200 for p99)")
    parser.add_argument("--backlog", type=int, help="events in the drain backlog")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, outboxes)")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else Params()
    if args.alarms:
        params = Params(**{**asdict(params), "alarms": args.alarms})
    if args.backlog:
        params = Params(**{**asdict(params), "backlog": args.backlog})

    with work_dir("wardgate-bench-uplink-", "bench-gateways.log", args.keep) as workdir:
        mosquitto = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout
        print(f"wardgate uplink benchmark ({'quick' if args.quick else 'full'})")
        print(f"machine: {machine_summary()}; loopback; {mosquitto.splitlines()[0]}")
        print(f"work dir (outboxes on disk, {_fs_type(workdir)}): {workdir}")
        print(f"load average before: {loadavg()}")
        # persistence keeps the subscriber's session over the outage; it is written at shutdown
        # only, so that the broker's periodic saves (disk writes in its one thread) do not
        # pollute the timings
        broker = MosquittoBroker(
            workdir / "broker", persistence=True, extra_conf="autosave_interval 3600\n"
        )
        broker.start()
        sub = None
        started = time.monotonic()
        try:
            sub = Subscriber(broker)
            print(f"1/3 alarm latency: {params.alarms} alarms under {params.load_rate} ev/s ...")
            lat_gw, window = latency_wardgate(workdir, broker, sub, params)
            lat_plain = latency_plain(broker, sub, params, window)
            print(f"   ... again under a command flood ({FLOOD_RATE}/s, acks on the same link)")
            lat_flood, _ = latency_wardgate(workdir, broker, sub, params, flood=True)
            print(f"2/3 drain of a {params.backlog:,}-event backlog after an outage ...")
            drain_gw = drain_wardgate(workdir, broker, sub, params)
            drain_plain_ = drain_plain(broker, sub, params, window)
            print("3/3 RSS of `wardgate run` under load ...")
            rss = rss_gateway(workdir, broker, sub, params)
            results = report(
                lat_gw, lat_plain, lat_flood, drain_gw, drain_plain_, rss, params, args.quick
            )
            finish_run(started, results, args.json)
        finally:
            if sub is not None:
                sub.stop()
            broker.stop()
    return 0


def _fs_type(path: Path) -> str:
    best = max(
        (p for p in psutil.disk_partitions(all=True) if str(path).startswith(p.mountpoint)),
        key=lambda p: len(p.mountpoint),
        default=None,
    )
    return best.fstype if best else "unknown fs"


if __name__ == "__main__":
    sys.exit(main())
