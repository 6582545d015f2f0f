import sqlite3

import pytest

from edge.uplink.outbox import Outbox, OutboxError, expired, remaining_expiry_s
from protocol.events import Event, Kind, Lane, decode
from tests.test_outbox_disk import fill, mount_tmpfs


@pytest.fixture
def tmpfs():
    yield from mount_tmpfs()


def ev(kind, n=0):
    return Event(Kind(kind), f"src{n}", {"n": n}, gateway="gw")


def drain(box, lane):
    return box.pending(lane, 0, 10**6)


def test_sequence_numbers_per_lane_survive_reopen(tmp_path):
    box = Outbox(tmp_path / "o.db")
    assert [box.put(ev("alarm"), "t").seq for _ in range(3)] == [1, 2, 3]
    assert box.put(ev("telemetry"), "t").seq == 1
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.put(ev("alarm"), "t").seq == 4
    assert len(box) == 5 and box.depth() == {"critical": 4, "events": 0, "bulk": 1}


def test_full_outbox_evicts_telemetry_then_events_never_alarms(tmp_path):
    box = Outbox(tmp_path / "o.db", max_events=20)
    for i in range(10):
        box.put(ev("telemetry", i), "t")
    for i in range(5):
        box.put(ev("reading", i), "t")
    for i in range(15):
        box.put(ev("alarm", i), "t")
    assert box.depth() == {"critical": 15, "events": 5, "bulk": 0}
    assert box.evictions["bulk"] == 10
    # the oldest telemetry went first: none is left, and readings are untouched
    for i in range(5):
        box.put(ev("fault", i), "t")
    assert box.depth() == {"critical": 20, "events": 0, "bulk": 0}
    assert box.evictions == {"critical": 0, "events": 5, "bulk": 10}
    # full of alarms: an alarm is still accepted, a reading is refused and counted
    box.put(ev("alarm", 99), "t")
    with pytest.raises(OutboxError, match="full of alarms"):
        box.put(ev("reading", 99), "t")
    assert box.depth()["critical"] == 21 and box.evictions["events"] == 6
    box.close()
    assert Outbox(tmp_path / "o.db").evictions == {"critical": 0, "events": 6, "bulk": 10}


def test_eviction_removes_oldest_first(tmp_path):
    box = Outbox(tmp_path / "o.db", max_events=10)
    for i in range(12):
        box.put(ev("reading", i), "t")
    kept = [r.payload for r in drain(box, Lane.EVENTS)]
    assert len(kept) == 10
    assert [decode(p).data["n"] for p in kept] == list(range(2, 12))


def test_rows_leave_only_when_deleted(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for i in range(3):
        box.put(ev("reading", i), "t")
    rows = drain(box, Lane.EVENTS)
    assert len(rows) == 3
    box.delete([rows[0].id])
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert [r.id for r in drain(box, Lane.EVENTS)] == [rows[1].id, rows[2].id]


def test_disk_full_keeps_alarms(tmpfs):
    """A really full filesystem (a 2 MiB tmpfs): telemetry gives way, alarms are kept."""
    box = Outbox(tmpfs / "o.db", fsync="normal")
    for i in range(6000):  # far more than fits: older telemetry is evicted to make room
        box.put(Event(Kind.TELEMETRY, "s", {"blob": "x" * 300, "i": i}), "t")
    assert box.evictions["bulk"] > 0
    fill(tmpfs / "junk")  # and not a byte left
    alarms = [box.put(ev("alarm", i), "t") for i in range(200)]
    critical = drain(box, Lane.CRITICAL)
    assert len(critical) == 200 and "memory_spill" not in box.depth()
    assert [r.payload for r in critical] == [a.to_cbor() for a in alarms]
    for _ in range(500):  # readings roll over each other and telemetry, never over alarms
        box.put(Event(Kind.READING, "s", {"blob": "z" * 300}), "t")
    assert len(drain(box, Lane.CRITICAL)) == 200


def test_disk_full_with_nothing_to_evict_holds_alarms_in_memory(tmpfs):
    box = Outbox(tmpfs / "o.db")
    fill(tmpfs / "junk")
    alarms = []
    while "memory_spill" not in box.depth() and len(alarms) < 20000:
        alarms.append(box.put(Event(Kind.ALARM, "s", {"pad": "y" * 400}), "t"))
    alarms += [box.put(Event(Kind.ALARM, "s", {"pad": "y" * 400}), "t") for _ in range(10)]
    assert box.depth()["memory_spill"] == 11
    with pytest.raises(OutboxError, match="disk full"):  # nothing to evict for a reading
        box.put(Event(Kind.READING, "s", {"pad": "r" * 400}), "t")
    rows = drain(box, Lane.CRITICAL)
    assert len(rows) == len(alarms)
    assert [r.payload for r in rows] == [a.to_cbor() for a in alarms]
    # acknowledging them (the spilled ones too) frees them, on the full filesystem
    box.delete([r.id for r in rows])
    assert len(box) == 0


def test_disk_budget_evicts_and_alarms_go_past_it_not_to_memory(tmp_path):
    box = Outbox(tmp_path / "o.db", fsync="normal", disk_budget_mb=4, reserve_kb=64)
    for i in range(2500):  # ~7 MB of telemetry into a 4 MB budget
        box.put(Event(Kind.TELEMETRY, "s", {"blob": "x" * 3000, "i": i}), "t")
    assert box.evictions["bulk"] > 500
    size = sum(f.stat().st_size for f in tmp_path.iterdir())
    assert size <= 4 * 1024 * 1024 + 64 * 1024, size
    alarms = [box.put(Event(Kind.ALARM, "s", {"pad": "y" * 3000}), "t") for _ in range(2000)]
    assert "memory_spill" not in box.depth()  # past the budget, on disk: the fs has room
    assert [r.payload for r in drain(box, Lane.CRITICAL)] == [a.to_cbor() for a in alarms]


def test_outbox_from_the_previous_release_opens_and_sends(tmp_path):
    """v0.1.0 files have no boot/mono_ms columns: they are added, old rows age by wall clock."""
    db = sqlite3.connect(tmp_path / "o.db")
    db.executescript(
        """
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, lane INTEGER NOT NULL,
            topic TEXT NOT NULL, payload BLOB NOT NULL, created_ms INTEGER NOT NULL,
            expiry_s INTEGER);
        CREATE INDEX outbox_by_lane ON outbox (lane, id);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters VALUES ('seq_bulk', 7);
        """
    )
    old = Event(Kind.TELEMETRY, "s", {}, gateway="gw", seq=7)
    db.execute(
        "INSERT INTO outbox(lane, topic, payload, created_ms, expiry_s) VALUES (2, 't', ?, ?, 60)",
        (old.to_cbor(), old.time_ms - 120_000),  # stored two minutes ago: expired
    )
    db.execute(
        "INSERT INTO outbox(lane, topic, payload, created_ms, expiry_s) VALUES (2, 't', ?, ?, 60)",
        (old.to_cbor(), old.time_ms),
    )
    db.commit()
    db.close()
    box = Outbox(tmp_path / "o.db")
    rows = drain(box, Lane.BULK)
    assert [expired(r) for r in rows] == [True, False]
    assert 55 <= remaining_expiry_s(rows[1]) <= 60
    assert box.put(ev("telemetry"), "t", expiry_s=60).seq == 8
    assert len(drain(box, Lane.BULK)) == 3
    box.close()


def test_unwritable_path_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(OutboxError, match="cannot open the outbox"):
        Outbox(tmp_path / "f" / "o.db")
    assert sqlite3.sqlite_version
