"""The operations center's store on both engines: SQLite (embedded) and a private PostgreSQL
started by the test itself (Debian's initdb/pg_ctl on a free port, tests/pg.py)."""

from __future__ import annotations

import sqlite3

import pytest

from central import store as store_mod
from central.store import Conflict, Store, StoreError
from protocol.events import Event, Kind
from tests.pg import pg_bindir, private_postgres

SITE = "d03/w12/fp-d03-002"


@pytest.fixture(scope="module")
def pg_url():
    if pg_bindir() is None:
        pytest.fail("PostgreSQL server binaries missing: scripts/dev test installs postgresql")
    with private_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'central.db'}")
        yield s
        s.close()
        return
    url = request.getfixturevalue("pg_url")
    s = Store(url)
    yield s
    # a clean database for the next test: drop every table, the migrations make them again
    with s.transaction() as cur:
        cur.execute(
            "DROP TABLE IF EXISTS schema_migrations, gateways, sites, incidents, events, faults,"
            " quarantine, users, audit, service_status, handover"
        )
    s.close()


def alarm(source="n01/smoke", **data) -> Event:
    return Event(Kind.ALARM, source, data or {"cause": "smoke"})


def test_dedupe_grouping_and_the_queue_order(store):
    fire1, fire2 = alarm(), alarm("n02/heat", cause="heat")
    test_alarm = alarm("test", cause="test")
    fault = Event(Kind.FAULT, "n01", {"active": True, "code": "silent"})
    res = store.ingest([(SITE, fire1, 1000), (SITE, fire1, 1001), (SITE, test_alarm, 900)])
    assert [r.new for r in res] == [True, False, True]
    store.ingest([("d01/w01/gw-b", fault, 800), (SITE, fire2, 1100)])
    queue = store.queue()
    assert [q["category"] for q in queue] == ["fire", "fault", "test"]  # not by arrival
    assert queue[0]["event_count"] == 2  # two alarms of one site: one line, never dropped
    assert len(store.incident(queue[0]["id"])["events"]) == 2


def test_faults_are_state_collapsed_and_cleared(store):
    raised = Event(Kind.FAULT, "n01/smoke", {"active": True, "code": "open"})
    again = Event(Kind.FAULT, "n01/smoke", {"active": True, "code": "open"})
    cleared = Event(Kind.FAULT, "n01/smoke", {"active": False, "code": "open"})
    store.ingest([(SITE, raised, 1), (SITE, again, 2)])
    assert len(store.faults()) == 1 and len(store.queue()) == 1
    store.ingest([(SITE, cleared, 3)])
    assert store.faults() == []
    [row] = store.faults(active_only=False)
    assert row["cleared_ms"] == 3 and row["description"]
    assert store.queue()[0]["cleared_ms"] == 3  # still in the queue until a person closes it


def test_workflow_ownership_and_audit(store):
    [r] = store.ingest([(SITE, alarm(), 1000)])
    iid = r.incident_id
    store.take(iid, "anna")
    with pytest.raises(Conflict) as conflict:
        store.take(iid, "bob")
    assert conflict.value.owner == "anna"
    with pytest.raises(Conflict):
        store.dispatch(iid, "bob", "not mine")
    store.take(iid, "bob", force=True)  # taken over, after the console's warning
    store.dispatch(iid, "bob", "engine 3 sent")
    with pytest.raises(StoreError, match="outcome"):
        store.resolve(iid, "bob", "", "")
    store.resolve(iid, "bob", "fire", "kitchen fire, out")
    inc = store.incident(iid)
    assert inc["status"] == "resolved" and inc["outcome"] == "fire"
    assert [a["action"] for a in inc["audit"]] == [
        "incident_opened", "taken", "taken_over", "dispatched", "resolved",
    ]  # fmt: skip
    assert inc["audit"][2]["detail"] == {"from": "anna"}
    report = store.report(0, 10**15)["by"]["fire"]
    assert report["count"] == 1 and report["taken"] == 1


def test_hold_expires_back_into_the_queue_and_escalation_marks_once(store):
    [r] = store.ingest([(SITE, alarm(), 1000)])
    store.take(r.incident_id, "anna")
    store.hold(r.incident_id, "anna", 60)
    held = store.incident(r.incident_id)
    assert held["status"] == "held"
    store.release_expired_holds(held["held_until_ms"] + 1)
    back = store.incident(r.incident_id)
    assert back["status"] == "new" and back["owner"] is None
    [due] = store.escalate_due(10**15, 60)
    assert due["id"] == r.incident_id
    assert store.escalate_due(10**15, 60) == []


def test_sites_birth_fills_but_a_person_edit_wins(store):
    birth = {"online": True, "site": {"name": "School", "address": "Main St 1",
                                      "latitude": 52.5, "longitude": 13.4}}  # fmt: skip
    store.gateway_state(SITE, {**birth, "labels": {"n01/smoke": "kitchen"}}, 5)
    assert store.gateway(SITE)["labels"] == {"n01/smoke": "kitchen"}
    store.upsert_site(SITE, {"name": "School (east wing)", "key_box": "left of gate"}, "sup")
    store.gateway_state(SITE, birth, 6)  # the next birth does not undo the person's edit
    site = store.site(SITE)
    assert site["name"] == "School (east wing)" and site["key_box"] == "left of gate"
    assert store.audit_log(1)[0]["action"] == "site_edited"


def test_quarantine_keeps_the_raw_bytes(store):
    store.quarantine("wg/v1/x", b"\x00\xff\xfe", "invalid CBOR", 7)
    total, [row] = store.quarantined()
    assert total == 1 and row["hex"] == "00fffe" and row["reason"] == "invalid CBOR"


def test_a_database_newer_than_the_code_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "c.db"
    Store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    with pytest.raises(StoreError, match="newer than this wardgate"):
        Store(f"sqlite:///{path}")


def test_a_migration_added_later_is_applied_once(tmp_path, monkeypatch):
    path = tmp_path / "c.db"
    Store(f"sqlite:///{path}").close()
    extra = (2, "add a column", "ALTER TABLE sites ADD COLUMN floor TEXT")
    monkeypatch.setattr(store_mod, "MIGRATIONS", (*store_mod.MIGRATIONS, extra))
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    s = Store(f"sqlite:///{path}")
    assert s.schema_version() == 2
    s.close()
    assert Store(f"sqlite:///{path}").schema_version() == 2  # not applied twice


def test_hand_over_is_queued_with_the_event_and_survives_until_acknowledged(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    s = Store(url, handover_targets=("dc09",))
    fire, reading = alarm(), Event(Kind.READING, "n01/smoke", {"value": 1})
    fault = Event(Kind.FAULT, "n01", {"active": True, "code": "silent"})
    s.ingest([(SITE, fire, 1), (SITE, reading, 2), (SITE, fault, 3), (SITE, fire, 4)])
    pending = s.handover_pending("dc09")
    assert [(site, e.id_hex) for site, e in pending] == [(SITE, fire.id_hex), (SITE, fault.id_hex)]
    assert pending[0][1] == fire.with_(clock_synced=pending[0][1].clock_synced)
    s.handover_result(fire.id_hex, "dc09", "failed")
    s.close()
    s = Store(url, handover_targets=("dc09",))  # a restart: still owed
    assert len(s.handover_pending("dc09")) == 2
    s.handover_result(fire.id_hex, "dc09", "acked")
    assert [e.id_hex for _, e in s.handover_pending("dc09")] == [fault.id_hex]
    s.close()


def test_ingest_status_rows(store):
    store.set_status("ingest-a", True, "connected to broker:8884", 5, {"events": 3})
    store.set_status("ingest-a", False, "disconnected: keepalive", 9, {"events": 4})
    [row] = store.status()
    assert row["connected"] is False and row["since_ms"] == 9 and row["counts"] == {"events": 4}
