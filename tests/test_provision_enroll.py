"""Enrollment runs: what they write, that reruns change nothing, that changes are exact, that
removed gateways are revoked loudly, that crashes are recovered, and that `verify` catches
broken bundles. The broker side is in test_provision_broker.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from edge import config as edge_config
from edge.cli import main as wardgate
from provisioning import bundle, pki
from provisioning.boot import wpa_psk
from provisioning.enroll import Enroller
from provisioning.fleet import FleetError
from provisioning.inventory import load
from provisioning.passwd import check_password, parse_file
from provisioning.registry import Registry
from provisioning.verify import verify
from tests.test_provision_support import (
    INVENTORY,
    MODBUS_BUS,
    NODE_LINE,
    PASSPHRASE,
    bundle_file,
    copy_fleet,
    make_fleet,
    run,
)

IDS = ["gw-a", "gw-b", "gw-c"]


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory):
    """A fleet after one run of the test inventory (copied by tests that change it)."""
    fleet = make_fleet(tmp_path_factory.mktemp("enrolled"))
    report = run(fleet)
    assert [r.id for r in report.plan.new] == IDS
    return fleet


@pytest.fixture
def fleet(enrolled, tmp_path):
    return copy_fleet(enrolled, tmp_path / "fleet")


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file's mtime and content hash, but the registry's SQLite files and the input."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(("registry.sqlite3", ".lock", "inventory")):
            out[str(path.relative_to(root))] = (
                path.stat().st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return out


def registry_dump(fleet) -> tuple:
    reg = Registry(fleet.registry_path)
    try:
        return (reg.gateways(), reg.accounts(), reg.revocations(), reg.audit_log(10_000))
    finally:
        reg.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- a first run ------------------------------------------------------------------------------


def test_first_run_writes_bundles_broker_files_and_accounts(enrolled):
    for gw in IDS:
        directory = enrolled.bundle(gw)
        assert bundle.is_complete(directory, with_password=True)
        assert (enrolled.bundles_dir / f"{gw}.tar.gz").is_file()
        cfg = edge_config.load(directory / bundle.CONFIG)
        assert cfg.gateway.id == gw
        assert cfg.uplink.port == 8883 and cfg.uplink.tls.cert.name == "gateway.crt"
        cert = pki.load_cert((directory / bundle.CERT).read_bytes())
        assert cert.subject.rfc4514_string() == f"CN={gw}"
    broker = enrolled.broker_dir
    assert {p.name for p in broker.iterdir()} == {
        "ca.crt", "passwd", "acl", "wardgate.conf", "server.crt", "server.key", "crl.pem",
    }  # fmt: skip
    users = parse_file((broker / "passwd").read_text())
    assert sorted(users) == ["gw-a", "gw-b", "gw-c", "ops", "rx-d01", "rx-d02"]
    for name in ("ops", "rx-d01"):
        password = (enrolled.accounts_dir / f"{name}.password").read_text().strip()
        assert check_password(password, users[name])
    gw_password = bundle_file(enrolled, "gw-a", "mqtt.password").read_text().strip()
    assert check_password(gw_password, users["gw-a"])
    server = pki.load_cert((broker / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["localhost", "127.0.0.1"]


def test_secrets_are_0600_and_the_ca_key_is_encrypted(enrolled):
    secret_paths = [enrolled.ca_dir / "ca.p12", enrolled.broker_dir / "server.key"]
    secret_paths += [enrolled.broker_dir / "passwd"]
    secret_paths += list(enrolled.accounts_dir.iterdir())
    secret_paths += [enrolled.bundles_dir / "gw-a.tar.gz"]
    for gw in IDS:
        secret_paths += [enrolled.bundle(gw) / rel for rel in bundle.SECRET_FILES]
        secret_paths.append(enrolled.bundle(gw) / bundle.CONFIG)
    for path in secret_paths:
        assert mode(path) == 0o600, path
    for directory in (enrolled.root, enrolled.ca_dir, enrolled.bundle("gw-a")):
        assert mode(directory) == 0o700, directory
    blob = (enrolled.ca_dir / "ca.p12").read_bytes()
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(blob, b"wrong passphrase")
    key, cert, _ = pkcs12.load_key_and_certificates(blob, PASSPHRASE)
    assert cert == pki.load_cert((enrolled.ca_dir / "ca.crt").read_bytes())
    # openssl reads it too (standard PKCS#12), with the passphrase only.
    out = subprocess.run(
        ["openssl", "pkcs12", "-in", str(enrolled.ca_dir / "ca.p12"), "-nokeys",
         "-passin", f"pass:{PASSPHRASE.decode()}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0 and "BEGIN CERTIFICATE" in out.stdout, out.stderr


def test_tarball_holds_the_bundle_with_its_modes(enrolled):
    import tarfile

    with tarfile.open(enrolled.bundles_dir / "gw-a.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    key = members[f"gw-a/{bundle.KEY}"]
    assert key.mode & 0o777 == 0o600 and key.uname == "root"
    assert f"gw-a/{bundle.CONFIG}" in members and "gw-a/MANIFEST.json" in members


def test_generated_configs_pass_wardgate_check_config(enrolled, capsys):
    for gw in IDS:
        # its files are on the gateway, not here
        path = str(enrolled.bundle(gw) / bundle.CONFIG)
        assert wardgate(["check-config", "--no-files", path]) == 0
    assert "gw-c: ok" not in capsys.readouterr().err


def test_cli_run_prints_no_secret(tmp_path, capsys, monkeypatch):
    fleet = make_fleet(tmp_path / "fleet")
    monkeypatch.setenv("WARDGATE_CA_PASSPHRASE", PASSPHRASE.decode())
    argv = ["provision", "run", str(fleet.root), "-i", str(fleet.root / "inventory.csv")]
    assert wardgate(argv) == 0
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "3 enrolled" in printed and "+ gw-c (d02/w1)" in printed
    secrets = [PASSPHRASE.decode()]
    secrets += [p.read_text().strip() for p in fleet.accounts_dir.iterdir()]
    for gw in IDS:
        secrets.append(bundle_file(fleet, gw, "mqtt.password").read_text().strip())
        key = bundle_file(fleet, gw, "tls/gateway.key").read_text()
        secrets.append(key.splitlines()[1])
    for secret in secrets:
        assert secret not in printed


# --- serial sensors ---------------------------------------------------------------------------


def port_summary(port) -> dict:
    return {
        "name": port.name, "path": port.path, "protocol": port.protocol, "baud": port.baud,
        "parity": port.parity, "stopbits": port.stopbits, "nodes": port.nodes,
        "devices": [(d.unit, d.profile, d.source) for d in port.devices],
    }  # fmt: skip


def test_inventory_sensors_become_the_configs_serial_section(enrolled):
    cfg = edge_config.load(enrolled.bundle("gw-a") / bundle.CONFIG)
    assert [port_summary(p) for p in cfg.serial.ports] == [
        {"name": "nodes1", "path": "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0",
         "protocol": "node", "baud": 115200, "parity": "N", "stopbits": 1, "nodes": [7, 8],
         "devices": []},
        {"name": "modbus1", "path": "/dev/ttyUSB1", "protocol": "modbus", "baud": 9600,
         "parity": "E", "stopbits": 1, "nodes": [],
         "devices": [(1, "smoke_heat", "d01"), (12, "gas_lel", "kitchen")]},
    ]  # fmt: skip
    # the older `PORT=wardnode` spelling is a node line
    cfg_c = edge_config.load(enrolled.bundle("gw-c") / bundle.CONFIG)
    assert [port_summary(p) for p in cfg_c.serial.ports] == [
        {"name": "nodes1", "path": "/dev/ttyAMA0", "protocol": "node", "baud": 115200,
         "parity": "N", "stopbits": 1, "nodes": [], "devices": []},
    ]  # fmt: skip
    assert edge_config.load(enrolled.bundle("gw-b") / bundle.CONFIG).serial.ports == []
    # config.toml holds them: no sidecar file any more
    for gw in IDS:
        assert not bundle_file(enrolled, gw, "hardware.toml").exists()
        manifest = (enrolled.bundle(gw) / bundle.MANIFEST).read_text()
        assert "hardware.toml" not in manifest


def test_the_serial_section_is_real_toml_tables(enrolled):
    """A technician reading config.toml sees the tables docs/sensors.md describes."""
    text = (enrolled.bundle("gw-a") / bundle.CONFIG).read_text()
    doc = tomllib.loads(text)
    assert doc["serial"]["ports"][1]["devices"][1] == {
        "unit": 12, "profile": "gas_lel", "name": "kitchen",
    }  # fmt: skip
    assert text.count("[[serial.ports]]") == 2


def test_sensor_change_rebuilds_only_that_config(fleet):
    key = bundle_file(fleet, "gw-a", "tls/gateway.key").read_bytes()
    original = (fleet.bundle("gw-a") / bundle.CONFIG).read_bytes()
    before = snapshot(fleet.root)
    changed = INVENTORY.replace(MODBUS_BUS, MODBUS_BUS + " 3:smoke_heat:hall")
    report = run(fleet, changed)
    assert [row.id for row, _ in report.plan.update] == ["gw-a"]
    assert report.broker_changed == []  # sensors are no business of the broker
    ports = edge_config.load(fleet.bundle("gw-a") / bundle.CONFIG).serial.ports
    assert [d.source for d in ports[1].devices] == ["d01", "kitchen", "hall"]
    assert bundle_file(fleet, "gw-a", "tls/gateway.key").read_bytes() == key
    after = snapshot(fleet.root)
    touched = {path for path in after if before.get(path) != after[path]}
    assert touched and all(p.startswith(("bundles/gw-a/", "bundles/gw-a.tar.gz")) for p in touched)
    # and back: the same bytes as the first build, then a rerun touches nothing
    run(fleet, INVENTORY)
    assert (fleet.bundle("gw-a") / bundle.CONFIG).read_bytes() == original
    settled = snapshot(fleet.root)
    run(fleet, INVENTORY)
    assert snapshot(fleet.root) == settled


def test_a_sidecar_from_an_older_build_is_removed(fleet):
    """Bundles built before config.toml had [serial] carried etc/hardware.toml."""
    sidecar = bundle_file(fleet, "gw-c", "hardware.toml")
    sidecar.write_text('[[sensors]]\nport = "/dev/ttyAMA0"\nprofile = "wardnode"\n')
    reg = Registry(fleet.registry_path)
    try:
        with reg.transaction():
            reg.db.execute("UPDATE gateways SET build_digest = 'older build' WHERE id = 'gw-c'")
    finally:
        reg.close()
    report = run(fleet)
    assert [row.id for row, _ in report.plan.update] == ["gw-c"]
    assert not sidecar.exists()
    assert "hardware.toml" not in (fleet.bundle("gw-c") / bundle.MANIFEST).read_text()
    assert verify(fleet.bundle("gw-c"), connect=False).ok


def test_bad_sensors_stop_the_run_before_anything_is_written(fleet, capsys, monkeypatch):
    before, db_before = snapshot(fleet.root), registry_dump(fleet)
    bad = INVENTORY.replace(NODE_LINE, "/dev/ttyUSB1=node 7")  # the Modbus bus's port
    bad = bad.replace("1:smoke_heat", "1:smoke_heta")
    (fleet.root / "inventory.csv").write_text(bad)
    monkeypatch.setenv("WARDGATE_CA_PASSPHRASE", PASSPHRASE.decode())
    argv = ["provision", "run", str(fleet.root), "-i", str(fleet.root / "inventory.csv")]
    assert wardgate(argv) != 0
    err = capsys.readouterr().err
    assert "inventory.csv:2:7: sensors: '/dev/ttyUSB1=modbus baud=9600 parity=E " in err
    assert "unknown Modbus profile 'smoke_heta'; built in: gas_lel, smoke_heat" in err
    assert snapshot(fleet.root) == before and registry_dump(fleet) == db_before
    (fleet.root / "inventory.csv").write_text(bad.replace("1:smoke_heta", "1:smoke_heat"))
    assert wardgate(argv) != 0
    assert "port /dev/ttyUSB1 is already used by '/dev/ttyUSB1=node 7'" in capsys.readouterr().err
    assert snapshot(fleet.root) == before


# --- reruns -----------------------------------------------------------------------------------


def test_unchanged_rerun_changes_nothing_and_needs_no_passphrase(fleet):
    before, db_before = snapshot(fleet.root), registry_dump(fleet)

    def no_passphrase() -> bytes:
        raise AssertionError("an unchanged rerun must not unlock the CA")

    report = Enroller(fleet, no_passphrase).run(load(fleet.root / "inventory.csv"))
    assert not report.plan.changes and report.broker_changed == []
    assert [row.id for row in report.plan.unchanged] == IDS
    assert snapshot(fleet.root) == before
    assert registry_dump(fleet) == db_before


def test_new_rows_enroll_only_those(fleet):
    before = snapshot(fleet.root)
    report = run(fleet, INVENTORY + "gw-d,d02,w3,police_post,10000000000000d4,,,dhcp\n")
    assert [row.id for row in report.plan.new] == ["gw-d"]
    assert not (report.plan.update or report.plan.rekey or report.plan.revoke)
    after = snapshot(fleet.root)
    for path, value in before.items():
        if path.startswith("bundles/"):
            assert after[path] == value, f"{path} was touched"
    assert "user gw-d" in (fleet.broker_dir / "acl").read_text()
    assert set(report.broker_changed) == {"passwd", "acl"}


def test_ward_change_updates_config_and_acl_but_keeps_the_identity(fleet):
    key = bundle_file(fleet, "gw-a", "tls/gateway.key").read_bytes()
    cert = bundle_file(fleet, "gw-a", "tls/gateway.crt").read_bytes()
    report = run(fleet, INVENTORY.replace("gw-a,d01,w1", "gw-a,d01,w9"))
    assert [row.id for row, _ in report.plan.update] == ["gw-a"]
    assert bundle_file(fleet, "gw-a", "tls/gateway.key").read_bytes() == key
    assert bundle_file(fleet, "gw-a", "tls/gateway.crt").read_bytes() == cert
    assert edge_config.load(fleet.bundle("gw-a") / bundle.CONFIG).gateway.ward == "w9"
    acl = (fleet.broker_dir / "acl").read_text()
    assert "wg/v1/d01/w9/gw-a/evt/#" in acl and "wg/v1/d01/w1/gw-a/" not in acl
    assert report.broker_changed == ["acl"]
    assert verify(fleet.bundle("gw-a"), connect=False).ok


def test_removed_row_is_revoked_loudly(fleet):
    serial = registry_dump(fleet)[0][2].cert_serial
    report = run(fleet, "\n".join(INVENTORY.splitlines()[:3]) + "\n")
    assert [rec.id for rec in report.plan.revoke] == ["gw-c"]
    assert any("gw-c (d02/w1): REVOKED" in line for line in report.lines())
    crl = x509.load_pem_x509_crl((fleet.broker_dir / "crl.pem").read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.cessation_of_operation
    )
    assert "gw-c" not in (fleet.broker_dir / "acl").read_text()
    assert "gw-c" not in parse_file((fleet.broker_dir / "passwd").read_text())
    assert not fleet.bundle("gw-c").exists()
    assert "rx-d02" not in parse_file((fleet.broker_dir / "passwd").read_text())
    (rec,) = [r for r in registry_dump(fleet)[0] if r.id == "gw-c"]
    assert rec.status == "revoked" and "removed from" in rec.revoke_reason
    # Back in the inventory: a new identity, the old certificate stays revoked.
    report = run(fleet, INVENTORY)
    assert [row.id for row in report.plan.new] == ["gw-c"]
    new_serial = [r for r in registry_dump(fleet)[0] if r.id == "gw-c"][0].cert_serial
    assert new_serial != serial


def test_truncated_inventory_does_not_revoke_the_fleet(tmp_path):
    rows = [f"gw-{i:02},d01,w1,fire_point,10000000000000{i:02},,,dhcp" for i in range(12)]
    header = INVENTORY.splitlines()[0]
    fleet = make_fleet(tmp_path / "fleet", "\n".join([header, *rows]) + "\n")
    run(fleet)
    before, db_before = snapshot(fleet.root), registry_dump(fleet)
    with pytest.raises(FleetError, match="would revoke 10 of 12 enrolled gateways"):
        run(fleet, "\n".join([header, *rows[:2]]) + "\n")
    assert snapshot(fleet.root) == before and registry_dump(fleet) == db_before
    report = run(fleet, allow_mass_revoke=True)
    assert len(report.plan.revoke) == 10


def test_replaced_board_gets_a_new_identity_and_the_old_one_is_revoked(fleet):
    old = pki.load_cert(bundle_file(fleet, "gw-b", "tls/gateway.crt").read_bytes())
    report = run(fleet, INVENTORY.replace("10000000000000b2", "10000000000000bb"))
    assert [(row.id, "board replaced" in why) for row, _, why in report.plan.rekey] == [
        ("gw-b", True)
    ]
    new = pki.load_cert(bundle_file(fleet, "gw-b", "tls/gateway.crt").read_bytes())
    assert new.serial_number != old.serial_number
    crl = x509.load_pem_x509_crl((fleet.broker_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is None
    env = (fleet.bundle("gw-b") / "boot/wardgate/gateway.env").read_text()
    assert "WARDGATE_HW_SERIAL=10000000000000bb" in env


def test_reissue_after_key_compromise(fleet):
    report = run(fleet, reissue={"gw-a": "key_compromise"})
    assert [row.id for row, _, _ in report.plan.rekey] == ["gw-a"]
    reg = Registry(fleet.registry_path)
    try:
        reasons = {gw: reason for _, gw, _, reason in reg.revocations()}
    finally:
        reg.close()
    assert reasons == {"gw-a": "key_compromise"}


def test_dry_run_writes_nothing(fleet):
    before, db_before = snapshot(fleet.root), registry_dump(fleet)
    report = run(fleet, INVENTORY.replace("gw-a,d01,w1", "gw-a,d01,w9"), dry_run=True)
    assert [row.id for row, _ in report.plan.update] == ["gw-a"]
    assert report.broker_changed == ["acl"]
    assert "(dry run: nothing written)" in report.lines()[0]
    assert snapshot(fleet.root) == before and registry_dump(fleet) == db_before


def test_crash_before_commit_leaves_no_identity_behind(fleet, monkeypatch):
    inventory = INVENTORY + "gw-d,d02,w3,police_post,10000000000000d4,,,dhcp\n"

    def crash(self):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(Registry, "transaction", crash)
    with pytest.raises(KeyboardInterrupt):
        run(fleet, inventory)
    monkeypatch.undo()
    assert (fleet.bundles_dir / ".staging" / "gw-d").is_dir()  # staged, never committed
    assert not fleet.bundle("gw-d").exists()
    report = run(fleet, inventory)
    assert [row.id for row in report.plan.new] == ["gw-d"]
    assert not (fleet.bundles_dir / ".staging").exists()
    assert verify(fleet.bundle("gw-d"), connect=False).ok


def test_crash_after_commit_is_completed_by_the_next_run(fleet, monkeypatch):
    inventory = INVENTORY + "gw-d,d02,w3,police_post,10000000000000d4,,,dhcp\n"

    def crash(self, gateway_id):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(Enroller, "_promote", crash)
    with pytest.raises(KeyboardInterrupt):
        run(fleet, inventory)
    monkeypatch.undo()
    assert not fleet.bundle("gw-d").exists()
    report = run(fleet, inventory)
    assert not report.plan.new  # already enrolled: its staged bundle was moved into place
    (rec,) = [r for r in registry_dump(fleet)[0] if r.id == "gw-d"]
    cert = pki.load_cert(bundle_file(fleet, "gw-d", "tls/gateway.crt").read_bytes())
    assert format(cert.serial_number, "x") == rec.cert_serial
    assert "user gw-d" in (fleet.broker_dir / "acl").read_text()


def test_wifi_needs_a_passphrase_and_a_country(fleet):
    inventory = INVENTORY.replace("gate=rtsp://10.0.0.9/s1,,dhcp", ",,wifi=Ward-IoT")
    with pytest.raises(
        FleetError, match=r"inventory.csv:3: network: no passphrase for Wi-Fi 'Ward-IoT'"
    ):
        run(fleet, inventory)
    fleet.wifi_path.write_text('[psk]\n"Ward-IoT" = "correct horse"\n')
    fleet.wifi_path.chmod(0o644)
    with pytest.raises(FleetError, match="readable by others"):
        run(fleet)
    fleet.wifi_path.chmod(0o600)
    with pytest.raises(FleetError, match="wlan_country is required"):
        run(fleet)
    text = fleet.settings_path.read_text().replace('# wlan_country = "GB"', 'wlan_country = "GB"')
    fleet.settings_path.write_text(text)
    report = run(fleet)
    assert {row.id for row, _ in report.plan.update} == set(IDS)  # settings changed: all rebuilt
    psk = wpa_psk("Ward-IoT", "correct horse")
    net = yaml.safe_load((fleet.bundle("gw-b") / "boot/cloud-init/network-config").read_text())
    assert net["network"]["wifis"]["wlan0"]["access-points"]["Ward-IoT"]["password"] == psk
    custom = tomllib.loads((fleet.bundle("gw-b") / "boot/bookworm/custom.toml").read_text())
    assert custom["wlan"] == {
        "ssid": "Ward-IoT", "password": psk, "password_encrypted": True, "hidden": False,
        "country": "GB",
    }  # fmt: skip
    assert mode(fleet.bundle("gw-b") / "boot/cloud-init/network-config") == 0o600
    for path in fleet.bundle("gw-b").rglob("*"):
        if path.is_file():
            assert b"correct horse" not in path.read_bytes()


def test_wpa_psk_matches_the_ieee_802_11i_test_vector():
    assert wpa_psk("IEEE", "password") == (
        "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    )


def test_status_table_and_csv(fleet, tmp_path, capsys):
    run(fleet, "\n".join(INVENTORY.splitlines()[:3]) + "\n")
    out_csv = tmp_path / "status.csv"
    assert wardgate(["provision", "status", str(fleet.root), "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "2 enrolled, 1 revoked" in printed and "gw-c" in printed
    import csv

    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["id"], r["status"], r["bundle"]) for r in rows] == [
        ("gw-a", "enrolled", "yes"), ("gw-b", "enrolled", "yes"), ("gw-c", "revoked", "-"),
    ]  # fmt: skip


# --- verify -----------------------------------------------------------------------------------


def checks(result, status="FAIL") -> dict[str, str]:
    return {c.name: c.message for c in result.checks if c.status == status}


def test_verify_passes_a_good_bundle(enrolled):
    result = verify(enrolled.bundle("gw-a"), connect=False)
    assert result.ok
    assert set(checks(result, "ok")) == {"config", "certificate", "revocation", "key"}


def test_verify_catches_a_swapped_key(fleet):
    shutil.copyfile(
        bundle_file(fleet, "gw-b", "tls/gateway.key"), bundle_file(fleet, "gw-a", "tls/gateway.key")
    )
    failed = checks(verify(fleet.bundle("gw-a"), connect=False))
    assert "gateway.key does not belong to gateway.crt (a swapped key?)" in failed["key"]


def test_verify_catches_a_foreign_certificate(fleet, pki):
    cert, key = pki.issue("gw-a")  # right name, other CA
    shutil.copyfile(cert, bundle_file(fleet, "gw-a", "tls/gateway.crt"))
    shutil.copyfile(key, bundle_file(fleet, "gw-a", "tls/gateway.key"))
    failed = checks(verify(fleet.bundle("gw-a"), connect=False))
    assert "was not issued by the fleet CA" in failed["chain"]
    assert "a foreign certificate?" in failed["chain"]


def test_verify_catches_an_expired_certificate(fleet):
    ca = pki.unlock(pki.load_ca_cert(fleet.ca_dir), fleet.ca_dir, PASSPHRASE)
    key = serialization.load_pem_private_key(
        bundle_file(fleet, "gw-a", "tls/gateway.key").read_bytes(), None
    )
    now = pki.now()
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=gw-a"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    bundle_file(fleet, "gw-a", "tls/gateway.crt").write_bytes(pki.cert_pem(expired))
    failed = checks(verify(fleet.bundle("gw-a"), connect=False))
    assert failed["certificate"].startswith("expired on ")
    assert "--reissue gw-a" in failed["certificate"]


def test_verify_catches_a_broken_config(fleet):
    path = fleet.bundle("gw-a") / bundle.CONFIG
    text = path.read_text().replace("[outbox]\n", "[outbox]\nmax_event = 5\n")
    path.write_text(text)
    line = text.splitlines().index("max_event = 5") + 1
    failed = checks(verify(fleet.bundle("gw-a"), connect=False))
    assert f"config.toml:{line}: outbox.max_event: unknown key" in failed["config"]


def test_verify_catches_a_config_for_another_gateway_and_loose_modes(fleet):
    shutil.copyfile(fleet.bundle("gw-b") / bundle.CONFIG, fleet.bundle("gw-a") / bundle.CONFIG)
    bundle_file(fleet, "gw-a", "tls/gateway.key").chmod(0o644)
    failed = checks(verify(fleet.bundle("gw-a"), connect=False))
    assert "CN is 'gw-a' but the config is for gateway 'gw-b'" in failed["certificate"]
    assert "tls/gateway.key is mode 0644" in failed["modes"]


def test_verify_reports_an_unreachable_broker(enrolled):
    from tests.mqtt_broker import free_port

    port = free_port()
    result = verify(enrolled.bundle("gw-a"), host="127.0.0.1", port=port, timeout=1)
    assert result.ok and "not reachable" in checks(result, "skip")["broker"]
    result = verify(enrolled.bundle("gw-a"), host="127.0.0.1", port=port, require_broker=True)
    assert not result.ok


def test_verify_cli_exit_codes(fleet, capsys):
    assert wardgate(["provision", "verify", str(fleet.bundle("gw-a")), "--no-connect"]) == 0
    (fleet.bundle("gw-a") / bundle.KEY).unlink()
    assert wardgate(["provision", "verify", str(fleet.bundle("gw-a")), "--no-connect"]) == 1
    assert "missing: boot/wardgate/etc/tls/gateway.key" in capsys.readouterr().err


# --- the technician's page credential (issue 10) -------------------------------------------------


def test_each_gateway_gets_its_own_technician_password_and_the_bundle_only_its_hash(enrolled):
    import tomllib

    from edge.localweb.auth import verify_password

    hashes = set()
    for gw in IDS:
        pw_file = enrolled.technicians_dir / f"{gw}.password"
        assert mode(pw_file) == 0o600 and mode(enrolled.technicians_dir) == 0o700
        password = pw_file.read_text().strip()
        config = (enrolled.bundle(gw) / bundle.CONFIG).read_text()
        assert password not in config
        page = tomllib.loads(config)["localweb"]
        assert page["enabled"] is True and page["bind"] == "lan"
        assert page["enabled_for_s"] == 4 * 3600.0  # fleet.toml [device] technician_page_hours
        assert verify_password(password, page["password_hash"])
        hashes.add(page["password_hash"])
    assert len(hashes) == len(IDS)


def test_a_rerun_keeps_the_technician_password_and_the_config_bytes(enrolled):
    before = {gw: (enrolled.bundle(gw) / bundle.CONFIG).read_bytes() for gw in IDS}
    passwords = {gw: (enrolled.technicians_dir / f"{gw}.password").read_text() for gw in IDS}
    run(enrolled)
    assert {gw: (enrolled.bundle(gw) / bundle.CONFIG).read_bytes() for gw in IDS} == before
    after = {gw: (enrolled.technicians_dir / f"{gw}.password").read_text() for gw in IDS}
    assert after == passwords


def test_technician_page_hours_zero_writes_no_page(tmp_path):
    fleet = make_fleet(tmp_path / "fleet")
    text = fleet.settings_path.read_text()
    fleet.settings_path.write_text(text.replace("[device]", "[device]\ntechnician_page_hours = 0"))
    run(fleet)
    config = (fleet.bundle(IDS[0]) / bundle.CONFIG).read_text()
    assert "[localweb]" not in config and not fleet.technicians_dir.exists()
