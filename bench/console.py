"""Operations-center benchmark (issue 9): alarm to a dispatcher's screen, and ingest rates.

    .venv/bin/python bench/console.py            # full run, about 3 min 15 s
    .venv/bin/python bench/console.py --quick    # smoke run, about 15 s (keeps it from rotting)
    .venv/bin/python bench/console.py --json out.json --keep   # also save results, keep logs

Nothing is mocked. One private Mosquitto (devtools.devbroker; passwords and an ACL: an `ingest`
account with the receiver's grants, the gateway's own account confined to its subtree, and a
`loadgen` account for the simulated fleet; broker logging at notice level instead of the test
broker's `log_type all`, which writes two lines per PUBLISH).

1. Alarm -> browser DOM. `wardgate central run` (ingest + SQLite store + console, its own
   process) and headless Debian Chromium (Playwright) logged in as a dispatcher on the queue
   page. A MutationObserver in the page stamps each new incident row (`tr[data-id]` in
   `#queue-body`) with `performance.timeOrigin + performance.now()`, i.e. the wall clock, which
   is compared with `time.time()` taken in this process just before `Gateway.emit(alarm)` on a
   real `edge.runtime.Gateway` (tests/harness.py's config: outbox on disk, fsync of alarms,
   alarm-ack supervision on). Both are CLOCK_REALTIME on one machine; the page/Python offset is
   measured (bracketed) and printed. After each sample the dispatcher takes and resolves the
   incident over the console's own HTTP routes (so the next alarm opens a new row), then waits
   0.2 - 0.4 s. Two phases on the same store: without load (the baseline) and while a load
   generator (its own process, a few clients through protocol/mqtt.py) plays 1,000 simulated
   gateways at a steady 500 events/s: heartbeats (`tele`, 60 %, every gateway every ~3.3 s;
   ingest batches them per gateway per second), readings (`evt/reading`, 30 %: the broker routes
   them, ingest does not subscribe to them), and fault toggles (`evt/fault`, 10 %: 50 flaky
   gateways raise and clear a sensor fault once a second each: events table, fault state, the
   open fault incident's count, and a console refresh each). Before both phases every simulated
   gateway sent its retained birth (online, site name and position, sensor labels) and each
   flaky gateway its first fault, so both phases see the same store: 1,001 gateways and 50 open
   fault incidents in the queue. The central process's CPU is sampled per phase.
2. Ingest rate. N real CBOR alarm and fault events (half each, 1,000 gateways; alarms join
   their site's open fire incident or open one, faults toggle) go through
   `Ingest._handle_batch` (the writer thread's function, no broker) in batches of 500 (the
   writer's `batch_max`) into a fresh store, once on SQLite (WAL, synchronous=FULL) and once on
   a private PostgreSQL (tests/pg.py; default durability). Baseline in the same run: a bare loop
   of `INSERT INTO events` of the same rows (the values the store writes, prepared beforehand),
   one execute per row, 500 rows per transaction, same file/server and same settings, with the
   plain driver (sqlite3 / psycopg). Rounds alternate (bare, wardgate) on fresh databases.
   Also end to end: the same events published at QoS 1 by a separate process through the broker
   to a connected `Ingest` (SQLite and PostgreSQL), timed from the first publish to the last one
   stored.

Targets (issue 9): alarm -> DOM p99 <= 250 ms with the load; ingest reported as a ratio to the
bare loop (no fixed target). PASS/MISS is printed; the exit status is 0 either way (a
benchmark, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `central`, `edge` importable
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    finish_run,
    fmt,
    loadavg,
    machine_summary,
    percentile,
    print_table,
    ratio,
    work_dir,
)
from devtools.devbroker import MosquittoBroker  # noqa: E402
from protocol import mqtt as policy  # noqa: E402
from protocol.events import Event, Kind, now_ms  # noqa: E402

TARGET_P99_MS = 250.0
CHROMIUM = "/usr/bin/chromium"
PREFIX = "wg/v1"
INGEST_USER, INGEST_PASSWORD = "ingest", "ingest-bench-secret"
LOADGEN_USER, LOADGEN_PASSWORD = "loadgen", "loadgen-bench-secret"
DISPATCHER, DISPATCHER_PASSWORD = "dora", "dora-bench-password"
ACL = """\
user ingest
topic read wg/v1/+/+/+/evt/alarm
topic read wg/v1/+/+/+/evt/fault
topic read wg/v1/+/+/+/evt/smoke
topic read wg/v1/+/+/+/state
topic read wg/v1/+/+/+/tele
topic read wg/v1/+/+/+/snap/+
topic write wg/v1/+/+/+/ack

user loadgen
topic readwrite wg/#

pattern write wg/v1/+/+/%u/state
pattern write wg/v1/+/+/%u/evt/#
pattern write wg/v1/+/+/%u/tele
pattern write wg/v1/+/+/%u/cmd/res
pattern read wg/v1/+/+/%u/cmd/#
pattern read wg/v1/+/+/%u/ack
pattern read wg/v1/+/+/%u/state
"""
#: the load's mix, per 10 events
MIX = ("tele",) * 6 + ("reading",) * 3 + ("fault",)


@dataclass(frozen=True)
class Params:
    samples: int = 120  # alarms per phase (p99 of 120 is the second-largest-ish: >= 100)
    gateways: int = 1000
    flaky: int = 50  # simulated gateways that toggle a fault
    load_rate: float = 500.0
    warmup_s: float = 5.0
    ingest_events: int = 20_000
    rounds: int = 2
    e2e_events: int = 10_000


QUICK = Params(
    samples=8,
    gateways=40,
    flaky=4,
    load_rate=100.0,
    warmup_s=1.0,
    ingest_events=600,
    rounds=1,
    e2e_events=300,
)


def sim_site(i: int) -> tuple[str, str, str]:
    return f"d{i % 10 + 1:02d}", f"w{i // 10 % 10 + 1:02d}", f"sim-{i:04d}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(workdir: Path) -> MosquittoBroker:
    from tests.conftest import GATEWAY_PASSWORD, GATEWAY_USER

    users = {
        INGEST_USER: INGEST_PASSWORD,
        LOADGEN_USER: LOADGEN_PASSWORD,
        GATEWAY_USER: GATEWAY_PASSWORD,
    }
    broker = MosquittoBroker(workdir / "broker", users=users, acl=ACL, persistence=False)
    conf = broker.conf_path.read_text().replace(
        "log_type all\n", "log_type error\nlog_type warning\nlog_type notice\n"
    )
    broker.conf_path.write_text(conf)
    return broker.start()


def endpoint(broker: Any, user: str, password: str, client_id: str) -> policy.Endpoint:
    return policy.Endpoint(
        host=broker.host if hasattr(broker, "host") else broker[0],
        port=broker.port if hasattr(broker, "port") else broker[1],
        username=user,
        password=password,
        client_id=client_id,
        keepalive_s=30,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
        setting="bench",
    )


# --- the load generator (its own process) ------------------------------------------------------
def _loadgen_main(conn: Any, host: str, port: int, gateways: int, flaky: int) -> None:
    """1,000 simulated gateways through a few clients. Commands over `conn`:
    ("births",) -> retained births + each flaky gateway's first fault; ("load", rate) -> steady
    load until ("stop",); ("publish", [(topic, payload)]) -> QoS 1 burst; ("quit",)."""
    clients = []
    for k in range(4):
        c = policy.Connection(
            endpoint((host, port), LOADGEN_USER, LOADGEN_PASSWORD, f"loadgen-{k}"),
            name=f"loadgen-{k}",
        ).start()
        clients.append(c)
    for c in clients:
        if not c.wait_connected(10):
            conn.send(("error", f"loadgen could not connect: {c.last_error}"))
            return
    sites = [sim_site(i) for i in range(gateways)]
    fault_up = [False] * flaky
    seq = [0]

    def topic(i: int, leaf: str) -> str:
        d, w, g = sites[i]
        return f"{PREFIX}/{d}/{w}/{g}/{leaf}"

    def publish(i: int, leaf: str, payload: bytes, qos: int = 1, retain: bool = False):
        seq[0] += 1
        return clients[seq[0] % len(clients)].client.publish(
            topic(i, leaf), payload, qos=qos, retain=retain
        )

    def fault(i: int) -> bytes:
        fault_up[i] = not fault_up[i]
        data = {"code": "silent", "active": fault_up[i], "after_s": 30}
        return Event(Kind.FAULT, "n02/heat", data, gateway=sites[i][2]).to_cbor()

    def tele(i: int, n: int) -> bytes:
        data = {"uptime_s": n, "load1": 0.3, "rss_mb": 41, "outbox": {"events": 0, "bulk": 0}}
        return Event(Kind.TELEMETRY, "gateway", data, gateway=sites[i][2]).to_cbor()

    def reading(i: int, n: int) -> bytes:
        data = {"value": round(20 + (n % 70) / 10, 1), "unit": "C"}
        return Event(Kind.READING, "n02/heat", data, gateway=sites[i][2]).to_cbor()

    def births() -> int:
        infos = []
        for i, (_, _, g) in enumerate(sites):
            state = {
                "online": True,
                "version": "0.1.0",
                "labels": {"n01/smoke": f"{g} hall smoke", "n02/heat": f"{g} boiler heat"},
                "site": {
                    "name": f"Simulated site {i}",
                    "address": f"{i} Bench Street",
                    "latitude": 52.30 + (i % 100) / 1000,
                    "longitude": 4.80 + (i // 100) / 100,
                },
            }
            infos.append(publish(i, "state", json.dumps(state).encode(), retain=True))
        for i in range(flaky):
            infos.append(publish(i, "evt/fault", fault(i)))
        for info in infos:
            info.wait_for_publish(30)
        return len(infos)

    def load(rate: float) -> dict[str, int]:
        counts = {"tele": 0, "reading": 0, "fault": 0}
        nxt = {"tele": 0, "reading": 0, "fault": 0}
        started = time.monotonic()
        sent = 0
        while not conn.poll(0.01):
            due = int((time.monotonic() - started) * rate) - sent
            for _ in range(max(0, due)):
                what = MIX[sent % len(MIX)]
                if what == "fault":
                    i = nxt["fault"] % flaky
                    publish(i, "evt/fault", fault(i))
                else:
                    i = nxt[what] % gateways
                    payload = tele(i, sent) if what == "tele" else reading(i, sent)
                    publish(i, "tele" if what == "tele" else "evt/reading", payload)
                nxt[what] += 1
                counts[what] += 1
                sent += 1
        conn.recv()  # the ("stop",)
        counts["seconds"] = round(time.monotonic() - started, 2)  # type: ignore[assignment]
        return counts

    conn.send(("ready", None))
    while True:
        cmd = conn.recv()
        if cmd[0] == "births":
            conn.send(("done", births()))
        elif cmd[0] == "load":
            conn.send(("started", None))
            conn.send(("done", load(cmd[1])))
        elif cmd[0] == "publish":
            first = time.monotonic()
            infos = [publish_raw(clients, t, p) for t, p in cmd[1]]
            for info in infos:
                info.wait_for_publish(120)
            conn.send(("done", time.monotonic() - first))
        else:
            break
    for c in clients:
        c.stop()


def publish_raw(clients: list[policy.Connection], topic: str, payload: bytes):
    return clients[hash(topic) % len(clients)].client.publish(topic, payload, qos=1)


class LoadGen:
    def __init__(self, broker: MosquittoBroker, gateways: int, flaky: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_loadgen_main,
            args=(child, broker.host, broker.port, gateways, flaky),
            daemon=True,
        )
        self.proc.start()
        self._expect("ready", 30)

    def _expect(self, what: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"load generator: no {what!r} within {timeout} s")
        tag, value = self.conn.recv()
        if tag != what:
            raise RuntimeError(f"load generator: {tag}: {value}")
        return value

    def births(self) -> int:
        self.conn.send(("births",))
        return self._expect("done", 120)

    def start_load(self, rate: float) -> None:
        self.conn.send(("load", rate))
        self._expect("started", 10)

    def stop_load(self) -> dict[str, int]:
        self.conn.send(("stop",))
        return self._expect("done", 30)

    def publish(self, items: list[tuple[str, bytes]]) -> float:
        self.conn.send(("publish", items))
        return self._expect("done", 600)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(("quit",))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# --- the operations center as a process ---------------------------------------------------------
class Central:
    """`wardgate central run` with ingest, a SQLite store and the console on a free port."""

    def __init__(self, workdir: Path, broker: MosquittoBroker) -> None:
        from central import accounts
        from central.store import Store

        self.dir = workdir / "central"
        self.dir.mkdir()
        (self.dir / "ingest.password").write_text(INGEST_PASSWORD + "\n")
        self.db = self.dir / "central.db"
        self.port = _free_port()
        self.config = self.dir / "central.toml"
        self.config.write_text(
            f"""
[broker]
host = "{broker.host}"
port = {broker.port}
username = "{INGEST_USER}"
password_file = "{self.dir / "ingest.password"}"
client_id = "ingest-bench"

[store]
url = "sqlite:///{self.db}"

[console]
port = {self.port}
"""
        )
        store = Store(f"sqlite:///{self.db}")
        accounts.add_user(store, DISPATCHER, "dispatcher", "Dora Dispatcher", DISPATCHER_PASSWORD)
        store.close()
        args = [sys.executable, "-m", "edge.cli", "--log-level", "info", "central", "run",
                "--config", str(self.config)]  # fmt: skip
        self.log_path = self.dir / "central.log"
        log = open(self.log_path, "wb")  # noqa: SIM115  (handed to the child)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                     env=env)  # fmt: skip
        log.close()
        self.ps = psutil.Process(self.proc.pid)
        self.wait_log("ingest: subscribed", 30)
        self.wait_log("console on", 30)
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"central: no {text!r} within {timeout} s:\n{self.log()[-3000:]}")

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- part 1: alarm -> DOM ---------------------------------------------------------------------
OBSERVER_JS = """() => {
  window.__wgSeen = window.__wgSeen || {};
  const stamp = (tr) => {
    const id = tr.dataset && tr.dataset.id;
    if (id && !(id in window.__wgSeen)) {
      window.__wgSeen[id] = {t: performance.timeOrigin + performance.now(),
                             category: tr.dataset.category};
    }
  };
  document.querySelectorAll('#queue-body tr[data-id]').forEach(stamp);
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) {
      if (n.nodeType !== 1) continue;
      if (n.matches('tr[data-id]')) stamp(n);
      n.querySelectorAll && n.querySelectorAll('tr[data-id]').forEach(stamp);
    }
  }).observe(document.getElementById('queue-body'), {childList: true, subtree: true});
  return true;
}"""


@dataclass
class Phase:
    name: str
    latencies_ms: list[float]
    lost: int
    cpu_percent: float
    broker_cpu_percent: float
    seconds: float
    load: dict[str, Any] | None = None

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def clock_offset_ms(page: Any) -> tuple[float, float]:
    """(page clock - time.time(), bracket width) in ms: the best of 20 bracketed reads."""
    best = None
    for _ in range(20):
        a = time.time()
        t = page.evaluate("performance.timeOrigin + performance.now()")
        b = time.time()
        width = (b - a) * 1000
        offset = t - (a + b) / 2 * 1000
        if best is None or width < best[1]:
            best = (offset, width)
    return best  # type: ignore[return-value]


def run_phase(
    name: str,
    params: Params,
    gateway: Any,
    page: Any,
    central: Central,
    broker_ps: psutil.Process,
    csrf: str,
    rng: random.Random,
) -> Phase:
    latencies: list[float] = []
    lost = 0
    cpu0, bcpu0, t_start = central.cpu_seconds(), _cpu(broker_ps), time.monotonic()
    for _ in range(params.samples):
        before = set(page.evaluate("Object.keys(window.__wgSeen)"))
        t0 = time.time()
        gateway.emit(Kind.ALARM, "n01/smoke", {"cause": "smoke", "value": 7000})
        try:
            handle = page.wait_for_function(
                """(before) => Object.entries(window.__wgSeen)
                     .filter(([id, v]) => !before.includes(id) && v.category === 'fire')
                     .map(([id, v]) => [id, v.t])[0] || null""",
                arg=sorted(before),
                polling=20,
                timeout=10_000,
            )
        except Exception:
            lost += 1
            continue
        incident_id, t1 = handle.json_value()
        latencies.append(t1 - t0 * 1000)
        headers = {"X-CSRF-Token": csrf}
        base = f"{central.url}/incident/{incident_id}"
        page.request.post(f"{base}/take", headers=headers, max_redirects=0)
        r = page.request.post(
            f"{base}/resolve", headers=headers, form={"outcome": "test"}, max_redirects=0
        )
        if r.status != 303:
            raise RuntimeError(f"resolving incident {incident_id}: HTTP {r.status} {r.text()}")
        page.wait_for_selector(f"#queue-body tr[data-id='{incident_id}']", state="detached")
        time.sleep(rng.uniform(0.2, 0.4))
    seconds = time.monotonic() - t_start
    return Phase(
        name,
        latencies,
        lost,
        100 * (central.cpu_seconds() - cpu0) / seconds,
        100 * (_cpu(broker_ps) - bcpu0) / seconds,
        seconds,
    )


def _cpu(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return t.user + t.system


def latency_bench(
    workdir: Path, broker: MosquittoBroker, params: Params, py_spy: str | None = None
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from edge import config as config_mod
    from edge.runtime import Gateway
    from tests.harness import gateway_config_text

    rng = random.Random(9)
    out: dict[str, Any] = {}
    central = Central(workdir, broker)
    loadgen = LoadGen(broker, params.gateways, params.flaky)
    gw_dir = workdir / "gateway"
    gw_dir.mkdir()
    cfg_path = gw_dir / "config.toml"
    cfg_path.write_text(gateway_config_text(broker, gw_dir, heartbeat_s=10))
    gateway = Gateway(config_mod.load(cfg_path), config_path=cfg_path)
    gateway.start()
    try:
        out["births"] = loadgen.births()
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run",
                      "--autoplay-policy=no-user-gesture-required"],
            )  # fmt: skip
            page = browser.new_context(viewport={"width": 1600, "height": 900}).new_page()
            page.goto(central.url + "/login")
            page.fill("input[name=username]", DISPATCHER)
            page.fill("input[name=password]", DISPATCHER_PASSWORD)
            page.click("button:has-text('Log in')")
            page.wait_for_url(central.url + "/")
            page.wait_for_function("document.body.dataset.revision !== undefined")
            # the store holds every simulated gateway and each flaky one's fault incident
            page.wait_for_function(
                f"document.querySelectorAll('#queue-body tr.cat-fault').length >= {params.flaky}",
                timeout=60_000,
            )
            page.evaluate(OBSERVER_JS)
            csrf = page.evaluate("document.querySelector('meta[name=\"csrf-token\"]').content")
            out["clock_offset_ms"], out["clock_bracket_ms"] = clock_offset_ms(page)
            broker_ps = psutil.Process(broker.proc.pid)
            quiet = run_phase("no load", params, gateway, page, central, broker_ps, csrf, rng)
            loadgen.start_load(params.load_rate)
            time.sleep(params.warmup_s)
            spy = None
            if py_spy:  # where the central process spends the loaded phase (collapsed stacks)
                out["py_spy"] = str(workdir / "central-under-load.txt")
                spy = subprocess.Popen(
                    [py_spy, "record", "--pid", str(central.proc.pid), "--nonblocking",
                     "--threads", "--format", "raw", "--output", out["py_spy"]],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            loaded = run_phase("load", params, gateway, page, central, broker_ps, csrf, rng)
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
                spy.wait(30)
            loaded.load = loadgen.stop_load()
            page.screenshot(path=str(workdir / "queue-after-load.png"))
            out["gateways_in_queue_page"] = page.evaluate(
                "document.querySelectorAll('#queue-body tr').length"
            )
            browser.close()
        out["phases"] = [asdict(quiet), asdict(loaded)]
        out["_phases"] = (quiet, loaded)
    finally:
        gateway.stop()
        loadgen.close()
        central.stop()
    return out


# --- part 2: ingest rate ------------------------------------------------------------------------
def make_events(n: int, gateways: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """Half alarms (on random gateways: join the open fire incident or open one), half faults
    (each gateway's sensor fault raised and cleared in turn); real CBOR, 1,000 gateways."""
    rng = random.Random(seed)
    up: dict[int, bool] = {}
    out = []
    for k in range(n):
        i = rng.randrange(gateways)
        d, w, g = sim_site(i)
        if k % 2 == 0:
            data = {"cause": "smoke", "value": rng.randrange(3000, 9000)}
            ev = Event(Kind.ALARM, f"n{rng.randrange(1, 9):02d}/smoke", data, gateway=g)
        else:
            up[i] = not up.get(i, False)
            data = {"code": "silent", "active": up[i], "after_s": 30}
            ev = Event(Kind.FAULT, "n02/heat", data, gateway=g)
        out.append((f"{PREFIX}/{d}/{w}/{g}/evt/{ev.kind}", ev.to_cbor()))
    return out


def bare_rows(items: list[tuple[str, bytes]], received_ms: int) -> list[tuple[Any, ...]]:
    """The events-table rows the store writes for these events (prepared outside the timing)."""
    from central.store import _json_default, is_test
    from protocol.events import decode

    rows = []
    for topic, payload in items:
        e = decode(payload)
        _, _, d, w, g, _ = topic.split("/", 5)
        data_json = json.dumps(e.data, default=_json_default, separators=(",", ":"))
        rows.append(
            (e.id_hex, str(e.kind), f"{d}/{w}/{g}", d, w, g, e.source, e.severity.name.lower(),
             e.time_ms, int(e.clock_synced), received_ms, int(is_test(e)), data_json, None)
        )  # fmt: skip
    return rows


INSERT = (
    "INSERT INTO events (id, kind, site, district, ward, gateway, source, severity, time_ms,"
    " clock_synced, received_ms, test, data_json, incident_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
BATCH = 500


def bare_sqlite(path: Path, rows: list[tuple[Any, ...]]) -> float:
    from central.store import Store

    Store(f"sqlite:///{path}").close()  # the same schema, indexes included
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    cur = conn.cursor()
    t = time.perf_counter()
    for k in range(0, len(rows), BATCH):
        cur.execute("BEGIN IMMEDIATE")
        for row in rows[k : k + BATCH]:
            cur.execute(INSERT, row)
        cur.execute("COMMIT")
    elapsed = time.perf_counter() - t
    conn.close()
    return len(rows) / elapsed


def bare_postgres(url: str, rows: list[tuple[Any, ...]]) -> float:
    import psycopg

    from central.store import Store

    Store(url).close()
    sql = INSERT.replace("?", "%s")
    with psycopg.connect(url, autocommit=False) as conn:
        cur = conn.cursor()
        t = time.perf_counter()
        for k in range(0, len(rows), BATCH):
            for row in rows[k : k + BATCH]:
                cur.execute(sql, row)
            conn.commit()
        elapsed = time.perf_counter() - t
    return len(rows) / elapsed


def new_ingest(url: str, broker: MosquittoBroker | None = None) -> Any:
    from central.ingest import Ingest, IngestOptions
    from central.live import LiveState
    from central.store import Store

    if broker is None:
        ep = policy.Endpoint(host="127.0.0.1", port=1, client_id="bench")  # never started
    else:
        ep = endpoint(broker, INGEST_USER, INGEST_PASSWORD, f"ingest-e2e-{time.monotonic_ns()}")
    # its own `$share` group: the console phase's ingest left a persistent session in the
    # default group, and the broker would queue every other event for it
    return Ingest(Store(url), LiveState(), IngestOptions(endpoint=ep, group="bench"))


def wardgate_direct(url: str, items: list[tuple[str, bytes]], profile: Path | None = None) -> float:
    from central.ingest import _Msg

    ingest = new_ingest(url)
    base = now_ms()
    msgs = [_Msg(t, p, k + 1, 1, False, base + k // 50, -1) for k, (t, p) in enumerate(items)]
    prof = None
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    for k in range(0, len(msgs), BATCH):
        ingest._handle_batch(msgs[k : k + BATCH])
    elapsed = time.perf_counter() - t
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    counts = ingest.live.counts
    ingest.store.close()
    if counts["events"] != len(items):
        raise RuntimeError(f"stored {counts['events']} of {len(items)} events: {counts}")
    return len(items) / elapsed


def wardgate_e2e(url: str, broker: MosquittoBroker, loadgen: LoadGen, items) -> dict[str, float]:
    """Rate from the first publish to the last event stored, and the publisher's own rate
    (all PUBACKed): when the two are close, the publisher is the limit, not ingest."""
    ingest = new_ingest(url, broker)
    ingest.start()
    try:
        deadline = time.monotonic() + 10
        while not ingest.live.broker.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the SUBACK
        t = time.perf_counter()
        publish_s = loadgen.publish(items)
        last, last_change = -1, time.monotonic()
        while ingest.live.counts["events"] < len(items):
            stored = ingest.live.counts["events"]
            if stored != last:
                last, last_change = stored, time.monotonic()
            elif time.monotonic() - last_change > 30:
                break  # no progress for 30 s
            time.sleep(0.005)
        elapsed = time.perf_counter() - t
        stored = ingest.live.counts["events"]
    finally:
        ingest.stop()
        ingest.store.close()
    if stored != len(items):
        raise RuntimeError(f"end to end: stored {stored} of {len(items)}")
    return {"rate": len(items) / elapsed, "publisher_rate": len(items) / publish_s}


def ingest_bench(
    workdir: Path, broker: MosquittoBroker, params: Params, profile: bool
) -> dict[str, Any]:
    from tests.pg import pg_bindir, private_postgres

    items = make_events(params.ingest_events, params.gateways)
    rows = bare_rows(items, now_ms())
    e2e_items = make_events(params.e2e_events, params.gateways, seed=8)
    results: dict[str, Any] = {"events": len(items), "e2e_events": len(e2e_items)}
    loadgen = LoadGen(broker, params.gateways, params.flaky)
    try:
        results["sqlite"] = {"bare": [], "wardgate": []}
        for r in range(params.rounds):
            d = workdir / f"sqlite-{r}"
            d.mkdir()
            results["sqlite"]["bare"].append(bare_sqlite(d / "bare.db", rows))
            prof = workdir / "ingest-sqlite.prof" if profile and r == 0 else None
            results["sqlite"]["wardgate"].append(
                wardgate_direct(f"sqlite:///{d / 'wardgate.db'}", items, prof)
            )
        results["sqlite"]["e2e"] = wardgate_e2e(
            f"sqlite:///{workdir / 'e2e.db'}", broker, loadgen, e2e_items
        )
        if pg_bindir() is None:
            results["postgresql"] = None
            print("PostgreSQL server binaries missing (apt-get install postgresql): skipped")
        else:
            import psycopg

            with private_postgres() as url:
                results["postgresql"] = {"bare": [], "wardgate": []}
                admin = psycopg.connect(url, autocommit=True)
                base = url.rsplit("/", 1)[0]
                for r in range(params.rounds):
                    for name in (f"bare{r}", f"wg{r}", f"e2e{r}"):
                        admin.execute(f"CREATE DATABASE {name}")
                    results["postgresql"]["bare"].append(bare_postgres(f"{base}/bare{r}", rows))
                    prof = workdir / "ingest-postgresql.prof" if profile and r == 0 else None
                    results["postgresql"]["wardgate"].append(
                        wardgate_direct(f"{base}/wg{r}", items, prof)
                    )
                results["postgresql"]["e2e"] = wardgate_e2e(
                    f"{base}/e2e0", broker, loadgen, e2e_items
                )
                admin.close()
    finally:
        loadgen.close()
    return results


# --- report -------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(lat: dict[str, Any], ing: dict[str, Any], params: Params) -> dict[str, Any]:
    quiet, loaded = lat["_phases"]
    print()
    print(
        f"1. Alarm -> browser DOM ({params.samples} alarms per phase; page clock - time.time() "
        f"= {lat['clock_offset_ms']:+.2f} ms, read within {lat['clock_bracket_ms']:.2f} ms)"
    )
    rows = []
    for label, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)):
        rows.append([f"latency {label} (ms)", fmt(quiet.p(q), 1), fmt(loaded.p(q), 1),
                     fmt(ratio(loaded.p(q), quiet.p(q)), 2)])  # fmt: skip
    rows.append(["lost (no row within 10 s)", str(quiet.lost), str(loaded.lost), ""])
    rows.append(["central process CPU (% of a core)", fmt(quiet.cpu_percent),
                 fmt(loaded.cpu_percent), ""])  # fmt: skip
    rows.append(["mosquitto CPU (% of a core)", fmt(quiet.broker_cpu_percent),
                 fmt(loaded.broker_cpu_percent), ""])  # fmt: skip
    print_table(["", "no load (baseline)", f"{params.gateways:,} gateways", "ratio"], rows)
    load = loaded.load or {}
    secs = float(load.get("seconds") or 1)
    mix = ", ".join(f"{k} {load.get(k, 0) / secs:.0f}/s" for k in ("tele", "reading", "fault"))
    total = sum(load.get(k, 0) for k in ("tele", "reading", "fault")) / secs
    print(f"load sent: {total:.0f} ev/s ({mix}) from {params.gateways} simulated gateways")
    ok_latency = loaded.p(99) <= TARGET_P99_MS and loaded.lost == 0
    print(
        f"  alarm -> DOM p99 under load {fmt(loaded.p(99))} ms (target <= {TARGET_P99_MS:.0f} ms,"
        f" none lost): {verdict(ok_latency)}"
    )
    print()
    print(f"2. Ingest rate ({ing['events']} alarm/fault events, batches of {BATCH}; best of "
          f"{params.rounds})")  # fmt: skip
    rows = []
    summary = {}
    for engine in ("sqlite", "postgresql"):
        r = ing.get(engine)
        if not r:
            continue
        bare, wg = max(r["bare"]), max(r["wardgate"])
        e2e = r["e2e"]["rate"]
        summary[engine] = {"bare": bare, "wardgate": wg, "ratio": wg / bare, "e2e": e2e}
        rows.append([engine, fmt(wg, 0), fmt(bare, 0), fmt(wg / bare, 2), fmt(e2e, 0),
                     fmt(r["e2e"]["publisher_rate"], 0)])  # fmt: skip
    print_table(
        ["store", "wardgate ev/s", "bare INSERT ev/s", "ratio",
         f"end to end via broker ev/s ({ing['e2e_events']} ev)", "publisher alone ev/s"],
        rows,
    )  # fmt: skip
    print()
    print("summary:")
    p99, base99 = fmt(loaded.p(99)), fmt(quiet.p(99))
    if loaded.latencies_ms:
        print(f"  alarm -> DOM p99 with {params.gateways:,} gateways at {total:.0f} ev/s: "
              f"{p99} ms (no load {base99} ms) -> {verdict(ok_latency)}")  # fmt: skip
    else:
        print("  alarm -> DOM: skipped (--skip-latency)")
    for engine, s in summary.items():
        print(f"  ingest into {engine}: {s['wardgate']:,.0f} ev/s = {s['ratio']:.2f} x the bare "
              f"insert loop; end to end {s['e2e']:,.0f} ev/s (reported, no target)")  # fmt: skip
    return {"latency_pass": ok_latency, "ingest": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--samples", type=int, help="alarms per latency phase (>= 100 for p99)")
    parser.add_argument("--events", type=int, help="events per ingest-rate run")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the first wardgate ingest run per engine (.prof in the "
                             "work dir; use with --keep)")  # fmt: skip
    parser.add_argument("--py-spy", metavar="PATH",
                        help="py-spy binary: record the central process through the "
                             "loaded phase (stacks in the work dir; with --keep)")  # fmt: skip
    parser.add_argument("--skip-latency", action="store_true", help="only the ingest rates")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, shots)")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else Params()
    if args.samples:
        params = Params(**{**asdict(params), "samples": args.samples})
    if args.events:
        params = Params(**{**asdict(params), "ingest_events": args.events})
    if not args.skip_latency and not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} missing (apt-get install chromium); use --skip-latency")
        return 2
    started = time.monotonic()
    print(f"machine: {machine_summary()}; load average before: {loadavg()}")
    with work_dir("wg-bench-console-", "bench.log", args.keep) as workdir:
        broker = start_broker(workdir)
        try:
            lat = None
            if not args.skip_latency:
                lat = latency_bench(workdir, broker, params, args.py_spy)
            ing = ingest_bench(workdir, broker, params, args.profile)
        finally:
            broker.stop()
        if lat is None:
            quiet = loaded = Phase("skipped", [], 0, 0.0, 0.0, 0.0)
            lat = {"_phases": (quiet, loaded), "clock_offset_ms": 0.0, "clock_bracket_ms": 0.0}
        verdicts = report(lat, ing, params)
        results = {
            "params": asdict(params),
            "latency": {k: v for k, v in lat.items() if not k.startswith("_")},
            "ingest": ing,
            "verdicts": verdicts,
        }
        finish_run(started, results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
