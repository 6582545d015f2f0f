"""The outbox on a really full filesystem (a 2 MiB tmpfs), and its expiry across clock steps.

Real faults only: the filesystem is a mounted tmpfs filled with a junk file and with telemetry
(no page limit), the gateway is a real `wardgate run` process with a real Mosquitto, and the
clock steps are libfaketime stepping a running process's wall clock.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from edge.uplink.outbox import Outbox, OutboxError
from protocol.events import Event, Kind, Lane, decode
from tests.harness import (
    REPO,
    GatewayProcess,
    SteppedClock,
    Watcher,
    gateway_config_text,
    write_config,
)

MIB = 1024 * 1024


def mount_tmpfs():
    """A real 2 MiB tmpfs (CI runs as root); a generator for fixtures."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = Path(tempfile.mkdtemp(prefix="wg-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


@pytest.fixture
def tmpfs():
    yield from mount_tmpfs()


@pytest.fixture
def logs():
    """Every outbox log record."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger("wardgate.outbox")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old)


def fill(path: Path) -> int:
    """Write junk until the filesystem says ENOSPC; returns the bytes written."""
    written = 0
    try:
        with open(path, "ab", buffering=0) as f:
            while True:
                written += f.write(b"j" * 4096)
    except OSError:
        pass
    try:  # the last partial block too
        with open(path, "ab", buffering=0) as f:
            while True:
                written += f.write(b"j" * 512)
    except OSError:
        pass
    return written


def free(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def alarm(i: int) -> Event:
    return Event(Kind.ALARM, "n01/smoke", {"i": i, "pad": "a" * 150}, gateway="gw")


def telemetry(i: int) -> Event:
    return Event(Kind.TELEMETRY, "load", {"i": i, "pad": "t" * 300}, gateway="gw")


def on_disk(db: Path) -> dict[bytes, int]:
    """Alarm id -> seq, as found by a fresh process-level reopen of the file."""
    box = Outbox(db)
    try:
        rows = box.pending(Lane.CRITICAL, 0, 10**7)
        assert not box.depth().get("memory_spill")
        return {decode(r.payload).id: decode(r.payload).seq for r in rows}
    finally:
        box.close()


def wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_full_tmpfs_keeps_committing_alarms_evicts_and_deletes(tmpfs, logs):
    """Telemetry fills the filesystem, then a junk file takes every last byte: alarms are still
    committed to disk (eviction makes room), acknowledged rows can be deleted, the WAL stays
    bounded, seq stays strictly increasing, and the log says so in a handful of lines."""
    db = tmpfs / "outbox.sqlite3"
    box = Outbox(db, fsync="normal")
    accepted: list[Event] = []
    refused = 0
    for i in range(6000):  # ~2 MB of telemetry: more than the filesystem holds
        try:
            box.put(telemetry(i), "t", expiry_s=3600)
        except OutboxError:
            refused += 1
    fill(tmpfs / "junk")
    assert free(tmpfs) < 4096
    wal_max = 0
    for i in range(300):
        accepted.append(box.put(alarm(i), "t"))
        wal_max = max(wal_max, wal_size(db))
    assert box.depth().get("memory_spill", 0) == 0, "alarms went to RAM although telemetry remained"
    assert box.depth()["critical"] == 300
    # telemetry gave way to alarms, oldest first, and was never refused while older remained
    assert refused == 0 and box.evictions["bulk"] > 0 and box.depth()["bulk"] > 1000
    # acknowledged rows can be deleted on the full filesystem (old code: "database or disk is
    # full", so delivered rows were sent again on every reconnect)
    bulk = box.pending(Lane.BULK, 0, 10**7)
    assert box.delete([r.id for r in bulk[:64]]) == 64
    assert box.delete([r.id for r in bulk[64:]]) == len(bulk) - 64
    acked = box.pending(Lane.CRITICAL, 0, 50)
    assert box.delete([r.id for r in acked]) == 50
    # now nothing is left to evict: alarms fill the space the telemetry gave back
    for i in range(300, 2300):
        accepted.append(box.put(alarm(i), "t"))
        wal_max = max(wal_max, wal_size(db))
    assert wal_max <= box.wal_limit + 64 * 1024, f"WAL grew to {wal_max}"
    seqs = [a.seq for a in accepted]
    assert seqs == list(range(1, len(accepted) + 1)), "seq not strictly increasing by one"
    box.close()
    found = on_disk(db)
    acked_ids = {decode(r.payload).id for r in acked}
    want = {a.id: a.seq for a in accepted if a.id not in acked_ids}
    assert {k: found.get(k) for k in want} == want, "an accepted alarm is not on disk"
    assert len(logs) <= 10, [r.getMessage() for r in logs]


def test_spill_goes_to_disk_when_space_returns_and_survives_close(tmpfs, logs):
    """Nothing left to evict and not a byte free: alarms wait in RAM with distinct seqs, go to
    disk within a second of space coming back, and a close commits what is still in RAM."""
    db = tmpfs / "outbox.sqlite3"
    box = Outbox(db, fsync="normal")
    fill(tmpfs / "junk")
    accepted: list[Event] = []
    for i in range(20000):  # until even the reserve is used up by alarms
        accepted.append(box.put(alarm(i), "t"))
        if box.depth().get("memory_spill", 0) >= 20:
            break
    assert box.depth().get("memory_spill") == 20, box.depth()
    assert [a.seq for a in accepted] == list(range(1, len(accepted) + 1))
    # the sender sees them (disk rows first, then RAM, in seq order)
    rows = box.pending(Lane.CRITICAL, 0, 10**7)
    assert [decode(r.payload).seq for r in rows] == [a.seq for a in accepted]
    # space comes back: within about a second the spill is on disk
    os.truncate(tmpfs / "junk", max(0, (tmpfs / "junk").stat().st_size - 256 * 1024))
    deadline = time.monotonic() + 3
    while box.depth().get("memory_spill") and time.monotonic() < deadline:
        box.pending(Lane.CRITICAL, 0, 1)
        time.sleep(0.1)
    assert not box.depth().get("memory_spill"), "spill not committed after space returned"
    # full again, more spilled alarms; a little space frees up and the gateway stops at once
    fill(tmpfs / "junk2")
    for i in range(20000):
        accepted.append(box.put(alarm(10**6 + i), "t"))
        if box.depth().get("memory_spill", 0) >= 10:
            break
    assert box.depth().get("memory_spill") == 10
    os.truncate(tmpfs / "junk2", 0)
    box.close()
    found = on_disk(db)
    assert found == {a.id: a.seq for a in accepted}, "an accepted alarm was lost on close"
    assert [a.seq for a in accepted] == list(range(1, len(accepted) + 1))
    box = Outbox(db)
    assert box.put(alarm(-1), "t").seq == len(accepted) + 1, "seq counter not persisted"
    box.close()
    assert len(logs) <= 12, [r.getMessage() for r in logs]


def test_spill_that_cannot_be_written_is_logged_critical_with_payloads(tmpfs, logs):
    db = tmpfs / "outbox.sqlite3"
    box = Outbox(db, fsync="normal")
    fill(tmpfs / "junk")
    spilled: list[Event] = []
    for i in range(20000):
        a = box.put(alarm(i), "t")
        if box.depth().get("memory_spill"):
            spilled.append(a)
            if len(spilled) == 5:
                break
    box.close()  # the disk is still full: it must say so, never drop them silently
    critical = [r.getMessage() for r in logs if r.levelno == logging.CRITICAL]
    assert any("closing with 5 accepted alarm(s)" in m for m in critical), critical
    text = "\n".join(critical)
    assert all(a.to_cbor().hex() in text for a in spilled)


# --- a real gateway on a full tmpfs ------------------------------------------------------------
@pytest.fixture
def watcher(broker):
    w = Watcher(broker)
    yield w
    w.stop()


def test_gateway_on_full_tmpfs_delivers_every_alarm_across_sigterm(
    tmpfs, tmp_path, broker, watcher
):
    """`wardgate run` with its outbox on a tmpfs that a junk file fills completely, readings every
    5 ms and a test alarm every 50 ms, the broker down for a while (so the outbox fills), then
    SIGTERM and a restart: every alarm seq from 1 to the last arrives, none twice with two ids."""
    work = tmp_path
    text = gateway_config_text(
        broker,
        work,
        extra="[test_source]\nenabled = true\ninterval_s = 0.01\nalarm_every_s = 0.05\n",
    ).replace(f'path = "{work / "outbox.sqlite3"}"', f'path = "{tmpfs / "outbox.sqlite3"}"')
    config_path = write_config(work, text)
    proc = GatewayProcess(config_path).start()
    try:
        watcher.wait_for(lambda: len(watcher.events("alarm")) >= 5, what="first alarms")
        broker.stop()
        fill(tmpfs / "junk")
        time.sleep(4)  # readings and alarms pile up on the full filesystem
        assert proc.terminate() == 0, proc.log()[-3000:]
        broker.start()
        proc.start()
        time.sleep(1.5)
        assert proc.terminate() == 0, proc.log()[-3000:]
        proc.start()

        def all_there() -> bool:
            seqs = {e.seq for e in watcher.events("alarm") if e.source == "test/alarm"}
            return bool(seqs) and seqs == set(range(1, max(seqs) + 1)) and max(seqs) > 60

        watcher.wait_for(all_there, timeout=20, what="every alarm seq, no gap")
    finally:
        if proc.proc and proc.proc.poll() is None:
            proc.terminate()
        (tmpfs / "junk").unlink(missing_ok=True)
    alarms = [e for e in watcher.events("alarm") if e.source == "test/alarm"]
    by_seq: dict[int, set[bytes]] = {}
    for e in alarms:
        by_seq.setdefault(e.seq, set()).add(e.id)
    assert all(len(ids) == 1 for ids in by_seq.values()), "two alarms share a seq"
    assert "NOT stored" not in proc.log()
    assert proc.log().count("outbox") < 60, proc.log()[-3000:]


# --- expiry across wall-clock steps (libfaketime) ----------------------------------------------
HOLDER = textwrap.dedent(
    """
    import json, sys
    from protocol.events import Event, Kind, Lane
    from edge.uplink.outbox import Outbox, expired, remaining_expiry_s
    path = sys.argv[1]
    box = Outbox(path, fsync="normal")
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "put":  # put NAME EXPIRY_S
            box.put(Event(Kind.TELEMETRY, cmd[1], {}), "t", expiry_s=int(cmd[2]))
        elif cmd[0] == "reopen":
            box.close()
            box = Outbox(path, fsync="normal")
        out = {}
        for row in box.pending(Lane.BULK, 0, 100):
            from protocol.events import decode
            out[decode(row.payload).source] = [expired(row), remaining_expiry_s(row)]
        print(json.dumps(out), flush=True)
    """
)


def test_queued_telemetry_expiry_ignores_wall_clock_steps(tmp_path):
    if SteppedClock.LIB is None:
        pytest.skip("libfaketime not installed (Debian package faketime)")
    clock = SteppedClock(tmp_path)
    env = {**os.environ, **clock.env()}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "o.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )

    def ask(line: str) -> dict:
        assert child.stdin and child.stdout
        child.stdin.write(line + "\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())

    try:
        ask("put long 600")
        assert ask("put short 3") == {"long": [False, 600], "short": [False, 3]}
        clock.step("+3600")  # NTP steps the clock an hour forward
        got = ask("check")
        assert got["long"] == [False, 600], f"expired early after a +1 h step: {got}"
        got = ask("reopen")  # a restart in the same boot ages rows the same way
        assert got["long"] == [False, 600], f"after reopen: {got}"
        clock.step("-3600")  # and an hour back
        time.sleep(3.3)
        got = ask("check")
        assert got["short"][0] is True, f"not expired 3.3 s after a 3 s expiry (-1 h step): {got}"
        assert got["long"][0] is False and 595 <= got["long"][1] <= 600, got
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(10)
