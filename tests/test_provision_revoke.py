"""`provision revoke` with RFC 5280 reasons, what `run`/`flash`/`verify` then say, `status` with
the CRL's nextUpdate, `crl --if-due` and its systemd timer, and `check-inventory` making the
checks `run` makes. Real CRL files (parsed back with cryptography) and a real Mosquitto."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.cli import main as wardgate
from provisioning import boot, cli, pki
from provisioning.fleet import PASSPHRASE_ENV
from provisioning.registry import Registry
from provisioning.verify import verify
from tests.test_provision_broker import connect, refused
from tests.test_provision_support import (
    INVENTORY,
    PASSPHRASE,
    Peer,
    bundle_file,
    copy_fleet,
    fleet_broker,
    make_fleet,
    run,
)

TODAY = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory):
    fleet = make_fleet(tmp_path_factory.mktemp("enrolled"))
    run(fleet)
    return fleet


@pytest.fixture
def fleet(enrolled, tmp_path, monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE.decode())
    return copy_fleet(enrolled, tmp_path / "fleet")


@pytest.fixture
def peers():
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def crl_of(fleet) -> x509.CertificateRevocationList:
    crl = x509.load_pem_x509_crl((fleet.broker_dir / "crl.pem").read_bytes())
    ca = pki.load_ca_cert(fleet.ca_dir).cert
    assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())
    return crl


def crl_number(crl) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def record(fleet, gateway):
    reg = Registry(fleet.registry_path)
    try:
        return reg.gateway(gateway)
    finally:
        reg.close()


def write_crl(fleet, days: float) -> None:
    """Replace the fleet's CRL by one that runs out in `days` (0: now)."""
    ca = pki.unlock(pki.load_ca_cert(fleet.ca_dir), fleet.ca_dir, PASSPHRASE)
    crl = ca.crl([], 99, 1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(crl.issuer)
        .last_update(pki.now() - dt.timedelta(days=40))
        .next_update(pki.now() + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(99), critical=False)
    )
    from cryptography.hazmat.primitives import hashes

    signed = builder.sign(ca.key, hashes.SHA256())
    (fleet.broker_dir / "crl.pem").write_bytes(signed.public_bytes(serialization.Encoding.PEM))


# --- revoke -----------------------------------------------------------------------------------


def test_revoke_key_compromise_resigns_the_crl_and_the_broker_refuses_it(
    fleet, tmp_path, capsys, peers
):
    cert = bundle_file(fleet, "gw-b", "tls/gateway.crt")
    serial = pki.load_cert(cert.read_bytes()).serial_number
    stolen = tmp_path / "stolen"  # what the thief has: a copy of the bundle
    shutil.copytree(fleet.bundle("gw-b"), stolen)
    number_before = crl_number(crl_of(fleet))

    argv = ["provision", "revoke", str(fleet.root), "gw-b", "--reason", "key_compromise"]
    assert wardgate(argv + ["--note", "box stolen from post 4"]) == 0
    out = capsys.readouterr().out
    assert f"gw-b: revoked on {TODAY} (key_compromise)" in out
    assert "crl.pem" in out and "passwd" in out and "acl" in out

    crl = crl_of(fleet)
    assert crl_number(crl) == number_before + 1
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    rec = record(fleet, "gw-b")
    assert (rec.status, rec.revoked_by) == ("revoked", "revoke")
    assert "box stolen from post 4" in rec.revoke_reason
    assert not fleet.bundle("gw-b").exists()
    assert not (fleet.bundles_dir / "gw-b.tar.gz").exists()
    assert "gw-b" not in (fleet.broker_dir / "acl").read_text()

    # again: nothing changes, and it says when and why
    before = (fleet.broker_dir / "crl.pem").read_bytes()
    assert wardgate(argv) == 0
    assert f"already revoked on {TODAY} (key_compromise)" in capsys.readouterr().out
    assert (fleet.broker_dir / "crl.pem").read_bytes() == before

    # verify of the stolen copy against the fleet's CRL
    result = verify(stolen, crl=fleet.broker_dir / "crl.pem", connect=False)
    assert not result.ok
    (message,) = [c.message for c in result.checks if c.name == "revocation"]
    assert f"revoked on {TODAY} (key_compromise)" in message

    # flash: refused, with the date and the reason
    boot_dir = tmp_path / "boot"
    boot_dir.mkdir()
    flash = ["provision", "flash", str(fleet.root), "gw-b", "--boot", str(boot_dir)]
    assert wardgate(flash) == 1
    assert f"gw-b: revoked on {TODAY} (key_compromise); not writing" in capsys.readouterr().err
    assert not any(boot_dir.iterdir())

    # the real broker with the new files: the stolen identity is refused, the others are not
    with fleet_broker(fleet, tmp_path / "broker") as broker:
        peer = Peer(
            fleet, broker.cert_port, cert=stolen / "boot/wardgate/etc/tls/gateway.crt",
            key=stolen / "boot/wardgate/etc/tls/gateway.key",
        )  # fmt: skip
        peers.append(peer)
        assert refused(peer), "a key_compromise-revoked certificate was accepted"
        connect(peers, fleet, broker.cert_port, gateway="gw-a")


def test_revoke_refuses_unknown_ids_and_a_wrong_passphrase(fleet, capsys, monkeypatch):
    assert wardgate(["provision", "revoke", str(fleet.root), "gw-x", "--reason", "cessation"]) == 1
    assert "gw-x: never enrolled" in capsys.readouterr().err
    monkeypatch.setenv(PASSPHRASE_ENV, "not the passphrase")
    before = (fleet.broker_dir / "crl.pem").read_bytes()
    assert wardgate(["provision", "revoke", str(fleet.root), "gw-a", "--reason", "cessation"]) == 1
    assert "wrong CA passphrase" in capsys.readouterr().err
    assert record(fleet, "gw-a").status == "enrolled"
    assert (fleet.broker_dir / "crl.pem").read_bytes() == before


@pytest.mark.parametrize(
    "short, flag",
    [
        ("cessation", x509.ReasonFlags.cessation_of_operation),
        ("affiliation_changed", x509.ReasonFlags.affiliation_changed),
        ("unspecified", None),  # RFC 5280: no reason code rather than unspecified (0)
    ],
)
def test_every_reason_lands_on_the_crl(fleet, short, flag):
    serial = int(record(fleet, "gw-c").cert_serial, 16)
    assert wardgate(["provision", "revoke", str(fleet.root), "gw-c", "--reason", short]) == 0
    entry = crl_of(fleet).get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    reasons = [e.value.reason for e in entry.extensions if isinstance(e.value, x509.CRLReason)]
    assert reasons == ([flag] if flag else [])
    assert pki.crl_reason(entry) == short


def test_cli_reasons_are_the_pki_reasons():
    assert tuple(pki.REVOKE_REASONS) == cli.REVOKE_REASONS
    for name in pki.REVOKE_REASONS.values():
        x509.ReasonFlags[name]  # every one is a real RFC 5280 reason


def test_run_does_not_enroll_a_revoked_board_again(fleet):
    assert (
        wardgate(["provision", "revoke", str(fleet.root), "gw-a", "--reason", "key_compromise"])
        == 0
    )
    report = run(fleet)
    assert report.plan.new == [] and not fleet.bundle("gw-a").exists()
    ((gw, problem),) = report.plan.broken
    assert gw == "gw-a" and f"revoked on {TODAY} (key_compromise)" in problem
    assert any(line.startswith("  ! gw-a: revoked on") for line in report.lines())
    # a replacement board (new hw_serial) is enrolled with a new identity
    report = run(fleet, INVENTORY.replace("10000000000000a1", "10000000000000a9"))
    assert [row.id for row in report.plan.new] == ["gw-a"]
    rec = record(fleet, "gw-a")
    assert rec.status == "enrolled" and rec.revoked_by is None and rec.hw_serial.endswith("a9")


def test_reissue_enrolls_a_revoked_board_anew(fleet):
    assert wardgate(["provision", "revoke", str(fleet.root), "gw-a", "--reason", "cessation"]) == 0
    report = run(fleet, reissue={"gw-a": "superseded"})
    assert [row.id for row in report.plan.new] == ["gw-a"] and not report.plan.broken
    assert fleet.bundle("gw-a").is_dir()


def test_a_version_1_registry_is_migrated(tmp_path):
    path = tmp_path / "registry.sqlite3"
    Registry(path).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE gateways DROP COLUMN revoked_by")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    reg = Registry(path)
    try:
        assert reg.meta("schema_version") == "2"
        columns = [row[1] for row in reg.db.execute("PRAGMA table_info(gateways)")]
        assert columns[-1] == "revoked_by"
    finally:
        reg.close()


# --- status -----------------------------------------------------------------------------------


def status_json(fleet, capsys, *extra) -> tuple[int, dict]:
    code = wardgate(["provision", "status", str(fleet.root), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_status_json_with_crl_dates_reasons_and_districts(fleet, capsys):
    assert wardgate(["provision", "revoke", str(fleet.root), "gw-c", "--reason", "cessation"]) == 0
    capsys.readouterr()
    code, doc = status_json(fleet, capsys)
    assert code == 0 and doc["format"] == "wardgate-status/1"
    crl = crl_of(fleet)
    assert doc["crl"]["state"] == "ok" and doc["crl"]["revoked"] == len(crl) == 1
    assert doc["crl"]["next_update"] == crl.next_update_utc.isoformat(timespec="seconds")
    assert 29 < doc["crl"]["days_left"] <= 30
    rows = {r["id"]: r for r in doc["gateways"]}
    assert rows["gw-c"]["status"] == "revoked" and rows["gw-c"]["revoke_code"] == "cessation"
    assert rows["gw-a"]["status"] == "enrolled" and rows["gw-a"]["revoke_code"] == ""
    code, doc = status_json(fleet, capsys, "--district", "d02")
    assert [r["id"] for r in doc["gateways"]] == ["gw-c"]

    assert wardgate(["provision", "status", str(fleet.root)]) == 0
    out = capsys.readouterr().out
    assert f"revoked {TODAY} (cessation)" in out and "CRL: nextUpdate" in out


def test_status_warns_before_and_fails_after_the_crls_next_update(fleet, capsys):
    write_crl(fleet, 2)  # within a third of crl_days = 30
    code, doc = status_json(fleet, capsys)
    assert code == 0 and doc["crl"]["state"] == "due"
    code, doc = status_json(fleet, capsys, "--warn-days", "1")
    assert doc["crl"]["state"] == "ok"
    write_crl(fleet, 0)
    code, doc = status_json(fleet, capsys)
    assert code == 1 and doc["crl"]["state"] == "expired"
    assert wardgate(["provision", "status", str(fleet.root)]) == 1
    assert "CRL: EXPIRED at" in capsys.readouterr().out
    # and verify says so too
    result = verify(fleet.bundle("gw-a"), connect=False)
    assert any(c.name == "crl" and "expired" in c.message for c in result.checks)


# --- crl --if-due and its timer ---------------------------------------------------------------


def test_crl_if_due_renews_only_when_due(fleet, capsys, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV)  # not due: no passphrase needed
    before = (fleet.broker_dir / "crl.pem").read_bytes()
    assert wardgate(["provision", "crl", str(fleet.root), "--if-due"]) == 0
    assert "broker files changed: none" in capsys.readouterr().out
    assert (fleet.broker_dir / "crl.pem").read_bytes() == before

    write_crl(fleet, 5)
    assert wardgate(["provision", "crl", str(fleet.root), "--if-due"]) == 1  # due: asks
    assert PASSPHRASE_ENV in capsys.readouterr().err
    pw = fleet.root.parent / "pw"
    pw.write_text(PASSPHRASE.decode() + "\n")
    pw.chmod(0o400)  # as systemd's LoadCredential= leaves it
    argv = ["provision", "crl", str(fleet.root), "--if-due", "--passphrase-file", str(pw)]
    assert wardgate(argv) == 0
    assert "crl.pem" in capsys.readouterr().out
    crl = crl_of(fleet)
    assert crl_number(crl) != 99 and (crl.next_update_utc - pki.now()).days >= 29


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_crl_timer_units_pass_systemd_analyze_verify(tmp_path, capsys):
    texts = {}
    for name in ("wardgate-crl.service", "wardgate-crl.timer"):
        assert wardgate(["provision", "template", name]) == 0
        texts[name] = capsys.readouterr().out
        assert texts[name] == boot.template(name)
    service = texts["wardgate-crl.service"]
    assert "provision crl /srv/wardgate-fleet --if-due --passphrase-file %d/ca-passphrase" in (
        service
    )
    (tmp_path / "wardgate-crl.service").write_text(
        service.replace("/opt/wardgate/venv/bin/wardgate", "/bin/true")
    )
    (tmp_path / "wardgate-crl.timer").write_text(texts["wardgate-crl.timer"])
    res = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "wardgate-crl.timer"),
         str(tmp_path / "wardgate-crl.service")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


# --- check-inventory --------------------------------------------------------------------------


def test_check_inventory_rejects_what_run_rejects(fleet, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(INVENTORY.replace("gw-b,", "rx-d01,").replace("gw-c,", "admin,"))
    assert wardgate(["provision", "check-inventory", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "rx-d01" in err and "'admin' is reserved" in err
    assert wardgate(["provision", "check-inventory", str(bad), "--fleet", str(fleet.root)]) == 1
    assert "rx-d01" in capsys.readouterr().err

    wifi = tmp_path / "wifi.csv"
    wifi.write_text(INVENTORY.replace(",dhcp\ngw-b", ",wifi=PostNet\ngw-b"))
    assert wardgate(["provision", "check-inventory", str(wifi)]) == 0
    assert "--fleet" in capsys.readouterr().out  # says what it could not check
    assert wardgate(["provision", "check-inventory", str(wifi), "--fleet", str(fleet.root)]) == 1
    assert "no passphrase for Wi-Fi 'PostNet'" in capsys.readouterr().err

    good = fleet.root / "inventory.csv"
    assert wardgate(["provision", "check-inventory", str(good), "--fleet", str(fleet.root)]) == 0
    assert f"ok against {fleet.root}" in capsys.readouterr().out
    assert wardgate(["provision", "revoke", str(fleet.root), "gw-a", "--reason", "cessation"]) == 0
    assert wardgate(["provision", "check-inventory", str(good), "--fleet", str(fleet.root)]) == 1
    captured = capsys.readouterr()
    assert "! gw-a: revoked on" in captured.out and "would not be enrolled" in captured.err


def test_status_reads_online_from_the_brokers_retained_state(fleet, tmp_path, capsys, peers):
    with fleet_broker(fleet, tmp_path / "broker") as broker:
        for gateway, topic, online in (("gw-a", "wg/v1/d01/w1/gw-a/state", True),
                                       ("gw-c", "wg/v1/d02/w1/gw-c/state", False)):  # fmt: skip
            peer = connect(peers, fleet, broker.cert_port, gateway=gateway)
            body = {"online": online, "time_ms": 1_780_000_000_000, "gateway": gateway,
                    "install": {"installed_at": "2026-05-28T20:00:00+00:00", "version": "0.1.0",
                                "result": "ok"}}  # fmt: skip
            info = peer.client.publish(topic, json.dumps(body), qos=1, retain=True)
            info.wait_for_publish(5)
        argv = ["--broker", "127.0.0.1", "--broker-port", str(broker.password_port),
                "--broker-user", "ops", "--broker-password-file",
                str(fleet.accounts_dir / "ops.password")]  # fmt: skip
        code, doc = status_json(fleet, capsys, *argv)
        assert code == 0
        rows = {r["id"]: (r["online"], r["state_at"]) for r in doc["gateways"]}
        assert rows == {
            "gw-a": ("yes", "2026-05-28T20:26:40+00:00"),
            "gw-b": ("", ""),  # never connected: no retained state
            "gw-c": ("no", "2026-05-28T20:26:40+00:00"),
        }
        installs = {r["id"]: r["install"] for r in doc["gateways"]}
        assert installs == {"gw-a": "ok 2026-05-28T20:00 v0.1.0", "gw-b": "",
                            "gw-c": "ok 2026-05-28T20:00 v0.1.0"}  # fmt: skip
        assert wardgate(["provision", "status", str(fleet.root), *argv]) == 0
        out = capsys.readouterr().out
        assert "online" in out and "install" in out
        bad = tmp_path / "bad.pw"
        bad.write_text("wrong\n")
        argv[-1] = str(bad)
        assert wardgate(["provision", "status", str(fleet.root), *argv]) == 1
        err = capsys.readouterr().err
        assert "broker: 127.0.0.1" in err and "--broker-password-file" in err, err
