"""Turn an inventory into enrolled gateways, idempotently.

One run: plan (compare inventory with the registry) -> build new bundles in a staging folder ->
commit the registry in one transaction -> move staged bundles into place -> rebuild the broker
files from the registry. A crash at any point leaves either the old state or a state the next run
completes: staged bundles whose certificate is not in the registry never left this machine and
are deleted; staged bundles whose certificate is committed are moved into place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.deploy import SYSTEMD_UNIT
from provisioning import boot, bundle, pki
from provisioning.broker import (
    Account,
    GatewayEntry,
    name_problems,
    operator_commands,
    render_acl,
    render_mosquitto_conf,
    wanted_accounts,
)
from provisioning.fleet import FleetDir, FleetError, FleetSettings, write_file
from provisioning.inventory import GatewayRow, Inventory
from provisioning.passwd import hash_password, new_password, render_file
from provisioning.registry import AccountRecord, GatewayRecord, Registry, utcnow

log = logging.getLogger(__name__)

BUILD_VERSION = "1"  # bump when bundle layout changes, so that reruns rebuild every bundle
STAGING = ".staging"
MASS_REVOKE_FRACTION = 0.10
MASS_REVOKE_MIN = 5


@dataclasses.dataclass
class Plan:
    new: list[GatewayRow] = dataclasses.field(default_factory=list)
    rekey: list[tuple[GatewayRow, GatewayRecord, str]] = dataclasses.field(default_factory=list)
    update: list[tuple[GatewayRow, GatewayRecord]] = dataclasses.field(default_factory=list)
    unchanged: list[GatewayRow] = dataclasses.field(default_factory=list)
    revoke: list[GatewayRecord] = dataclasses.field(default_factory=list)
    broken: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # id, problem
    accounts_new: list[Account] = dataclasses.field(default_factory=list)
    accounts_changed: list[Account] = dataclasses.field(default_factory=list)
    accounts_removed: list[str] = dataclasses.field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(
            self.new
            or self.rekey
            or self.update
            or self.revoke
            or self.accounts_new
            or self.accounts_changed
            or self.accounts_removed
        )


@dataclasses.dataclass
class Report:
    plan: Plan
    dry_run: bool = False
    broker_changed: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    ca_unlocked: bool = False

    def lines(self) -> list[str]:
        p = self.plan
        verb = "would change" if self.dry_run else "changed"
        out = [
            f"{len(p.new)} enrolled, {len(p.rekey)} re-keyed, {len(p.update)} updated, "
            f"{len(p.revoke)} revoked, {len(p.unchanged)} unchanged"
            + (" (dry run: nothing written)" if self.dry_run else "")
        ]
        for row in p.new:
            out.append(f"  + {row.id} ({row.district}/{row.ward}) [line {row.line}]")
        for row, _, why in p.rekey:
            out.append(f"  ~ {row.id}: new key and certificate ({why}); old certificate revoked")
        for row, _ in p.update:
            out.append(f"  ~ {row.id}: config updated [line {row.line}]")
        for rec in p.revoke:
            out.append(
                f"  - {rec.id} ({rec.district}/{rec.ward}): REVOKED, no longer in the inventory "
                f"(certificate {rec.cert_serial[:16]}...)"
            )
        for acc in p.accounts_new:
            out.append(f"  + account {acc.name} ({acc.role}, {', '.join(acc.districts)})")
        for acc in p.accounts_changed:
            out.append(f"  ~ account {acc.name} ({acc.role}, {', '.join(acc.districts)})")
        for name in p.accounts_removed:
            out.append(f"  - account {name} removed")
        for gw, problem in p.broken:
            out.append(f"  ! {gw}: {problem}")
        if self.broker_changed:
            out.append(f"broker files {verb}: {', '.join(self.broker_changed)}")
            if {"crl.pem", "server.crt", "ca.crt"} & set(self.broker_changed):
                out.append("  -> copy them to the broker and restart mosquitto")
            else:
                out.append("  -> copy them to the broker and reload mosquitto (SIGHUP)")
        out += [f"warning: {w}" for w in self.warnings]
        return out


class Enroller:
    def __init__(
        self,
        fleet: FleetDir,
        passphrase: Callable[[], bytes],
        *,
        unit_path: Path | None = None,
        progress: bool = False,
    ) -> None:
        self.fleet = fleet.require()
        self.settings: FleetSettings = fleet.settings()
        self._passphrase = passphrase
        self.unit_path = unit_path
        self.progress = progress
        self.ca = pki.load_ca_cert(fleet.ca_dir)
        self._ca_pem = pki.cert_pem(self.ca.cert)

    # --- public -------------------------------------------------------------------------------
    def _locked(self):
        return _locked_dir(self.fleet)

    def run(
        self,
        inventory: Inventory,
        *,
        dry_run: bool = False,
        allow_mass_revoke: bool = False,
        reissue: dict[str, str] | None = None,
    ) -> Report:
        """reissue: gateway id -> CRL reason (e.g. key_compromise) for a new key and cert."""
        clashes = name_problems(self.settings, inventory, self.fleet.settings_path)
        if clashes:
            raise FleetError("\n".join([*clashes, "Nothing was changed."]))
        with self._locked(), _open_registry(self.fleet) as reg:
            if not dry_run:
                self._recover_staging(reg)
            psks = self._psks(inventory)
            digests = {row.id: self._digest(row, psks.get(row.id)) for row in inventory.rows}
            plan = self._plan(inventory, reg, digests, reissue or {})
            report = Report(plan, dry_run=dry_run)
            self._guard_mass_revoke(plan, reg, allow_mass_revoke)
            if dry_run:
                report.broker_changed = self._preview_broker(reg, plan)
                return report
            for_plan = bool(plan.new or plan.rekey or plan.revoke)
            if for_plan or self._broker_needs_ca(reg):
                try:
                    passphrase = self._passphrase()
                except FleetError as exc:
                    if for_plan:
                        raise
                    report.warnings.append(
                        f"the broker certificate or the CRL is due for renewal, but {exc}"
                    )
                else:
                    pki.unlock(self.ca, self.fleet.ca_dir, passphrase)
                    report.ca_unlocked = True
            try:
                self._apply(plan, reg, inventory, digests, psks, report)
                ca = self.ca if report.ca_unlocked else None
                report.broker_changed = self._sync_broker(reg, ca)
            finally:
                self.ca.key = None
            return report

    def sync_broker(self, *, refresh_crl: bool = False) -> list[str]:
        """Rebuild the broker files from the registry (e.g. to renew the CRL)."""
        with self._locked(), _open_registry(self.fleet) as reg:
            if refresh_crl or self._broker_needs_ca(reg):
                pki.unlock(self.ca, self.fleet.ca_dir, self._passphrase())
            changed = self._sync_broker(
                reg, self.ca if self.ca.key else None, refresh_crl=refresh_crl
            )
            self.ca.key = None
            return changed

    def revoke(self, gateway_id: str, reason: str, note: str = "") -> tuple[str, list[str]]:
        """`provision revoke`: put the gateway's certificate on a freshly signed CRL, drop it
        from the broker's password file and ACL, delete its bundle. reason: a x509.ReasonFlags
        name. Returns (what happened, broker files changed). Nothing changes on a wrong
        passphrase; an already revoked gateway is left as it is."""
        with self._locked(), _open_registry(self.fleet) as reg:
            rec = reg.gateway(gateway_id)
            if rec is None:
                raise FleetError(
                    f"{gateway_id}: never enrolled in {self.fleet.root} "
                    "(see `wardgate provision status`); nothing was changed"
                )
            if rec.status == "revoked":
                return f"{gateway_id}: already {revoked_text(reg, rec)}; nothing was changed", []
            pki.unlock(self.ca, self.fleet.ca_dir, self._passphrase())
            try:
                detail = f"provision revoke --reason {pki.reason_name(reason)}"
                with reg.transaction():
                    reg.revoke(rec, reason, detail + (f": {note}" if note else ""), by="revoke")
                changed = self._sync_broker(reg, self.ca, refresh_crl=True)
            finally:
                self.ca.key = None
            shutil.rmtree(self.fleet.bundle(rec.id), ignore_errors=True)
            (self.fleet.bundles_dir / f"{rec.id}.tar.gz").unlink(missing_ok=True)
            rec = reg.gateway(gateway_id)
            return f"{gateway_id}: {revoked_text(reg, rec)}, certificate {rec.cert_serial}", changed

    # --- planning -----------------------------------------------------------------------------
    def _psks(self, inventory: Inventory) -> dict[str, str]:
        wanted = {row.id: row.network.wifi_ssid for row in inventory.rows if row.network.wifi_ssid}
        if not wanted:
            return {}
        passphrases = self.fleet.wifi_passphrases()
        problems, out = [], {}
        for row in inventory.rows:
            ssid = row.network.wifi_ssid
            if not ssid:
                continue
            if ssid not in passphrases:
                problems.append(
                    f"{inventory.path}:{row.line}: network: no passphrase for Wi-Fi {ssid!r}; "
                    f'add  "{ssid}" = "..."  under [psk] in {self.fleet.wifi_path}'
                )
                continue
            try:
                out[row.id] = boot.wpa_psk(ssid, passphrases[ssid])
            except ValueError as exc:
                problems.append(f"{self.fleet.wifi_path}: {exc}")
        if problems:
            raise FleetError("\n".join(problems))
        if not self.settings.device.wlan_country:
            raise FleetError(
                f"{self.fleet.settings_path}: [device] wlan_country is required when a gateway "
                'uses Wi-Fi (the two-letter regulatory domain, e.g. wlan_country = "GB")'
            )
        return out

    def _digest(self, row: GatewayRow, psk: str | None) -> str:
        h = hashlib.sha256()
        for part in (
            BUILD_VERSION,
            row.fingerprint(),
            self.settings.model_dump_json(),
            psk or "",
            boot.template("install.sh"),
            boot.template("firstrun.sh"),
            self._unit_text(),
            self._ca_pem.decode(),
        ):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    def _plan(
        self,
        inventory: Inventory,
        reg: Registry,
        digests: dict[str, str],
        reissue: dict[str, str],
    ) -> Plan:
        plan = Plan()
        records = {rec.id: rec for rec in reg.gateways()}
        with_pw = self.settings.accounts.gateway_passwords
        unknown = set(reissue) - {row.id for row in inventory.rows}
        if unknown:
            raise FleetError(f"cannot re-issue {', '.join(sorted(unknown))}: not in the inventory")
        for row in inventory.rows:
            rec = records.get(row.id)
            if (
                rec is not None
                and rec.revoked_by == "revoke"
                and row.id not in reissue
                and rec.hw_serial.lower() == row.hw_serial.lower()
            ):  # revoked on purpose (a stolen box?): the same board is not enrolled again
                plan.broken.append(
                    (
                        row.id,
                        f"{revoked_text(reg, rec)} by `provision revoke`; not enrolled again. "
                        "For a new board put its hw_serial into the inventory, or re-run with "
                        f"--reissue {row.id} to enroll this one anew; or remove the row",
                    )
                )
            elif rec is None or rec.status == "revoked":
                plan.new.append(row)
            elif row.id in reissue:
                plan.rekey.append((row, rec, f"re-issue requested: {reissue[row.id]}"))
            elif rec.hw_serial.lower() != row.hw_serial.lower():
                why = f"board replaced: {rec.hw_serial} -> {row.hw_serial}"
                plan.rekey.append((row, rec, why))
            elif not bundle.is_complete(self.fleet.bundle(row.id), with_pw and rec.password_hash):
                plan.broken.append(
                    (
                        row.id,
                        f"bundle {self.fleet.bundle(row.id)} is missing files (its key or "
                        "password cannot be recreated); run `wardgate provision run ... "
                        f"--reissue {row.id}` for a new identity",
                    )
                )
                plan.unchanged.append(row)
            elif rec.build_digest != digests[row.id]:
                plan.update.append((row, rec))
            else:
                plan.unchanged.append(row)
        in_inventory = {row.id for row in inventory.rows}
        plan.revoke = [
            rec
            for rec in records.values()
            if rec.status == "enrolled" and rec.id not in in_inventory
        ]
        wanted = {a.name: a for a in wanted_accounts(self.settings, inventory.districts)}
        have = {a.name: a for a in reg.accounts()}
        for name, acc in wanted.items():
            if name not in have:
                plan.accounts_new.append(acc)
            elif (have[name].role, have[name].districts) != (acc.role, acc.districts):
                plan.accounts_changed.append(acc)
        plan.accounts_removed = sorted(set(have) - set(wanted))
        return plan

    def _guard_mass_revoke(self, plan: Plan, reg: Registry, allowed: bool) -> None:
        enrolled = len(reg.gateways("enrolled"))
        limit = max(MASS_REVOKE_MIN, int(enrolled * MASS_REVOKE_FRACTION))
        if len(plan.revoke) > limit and not allowed:
            names = ", ".join(rec.id for rec in plan.revoke[:10])
            more = "..." if len(plan.revoke) > 10 else ""
            raise FleetError(
                f"this inventory would revoke {len(plan.revoke)} of {enrolled} enrolled gateways "
                f"({names}{more}). If the inventory is complete and that is intended, re-run "
                "with --allow-mass-revoke; if the file is truncated, fix it. Nothing was changed."
            )

    # --- applying -----------------------------------------------------------------------------
    def _apply(
        self,
        plan: Plan,
        reg: Registry,
        inventory: Inventory,
        digests: dict[str, str],
        psks: dict[str, str],
        report: Report,
    ) -> None:
        settings = self.settings
        staging = self.fleet.bundles_dir / STAGING
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        records: list[GatewayRecord] = []
        superseded: list[tuple[GatewayRecord, str, str]] = []
        updated: list[tuple[GatewayRow, GatewayRecord]] = []
        now = utcnow()
        work = [(row, None, "") for row in plan.new] + list(plan.rekey)
        with _progress(self.progress, len(work) + len(plan.update)) as advance:
            for row, old, why in work:
                identity = self._issue(row)
                files = self._public_files(row, inventory, psks, identity.cert_serial)
                files.update(bundle.identity_files(identity))
                directory = staging / row.id
                if directory.exists():
                    shutil.rmtree(directory)
                bundle.write_new(directory, files)
                bundle.write_manifest(directory, row.id, identity.cert_serial)
                bundle.make_tarball(directory, staging / f"{row.id}.tar.gz")
                cert = pki.load_cert(identity.cert_pem)
                records.append(
                    GatewayRecord(
                        id=row.id,
                        district=row.district,
                        ward=row.ward,
                        site_type=row.site_type,
                        hw_serial=row.hw_serial,
                        status="enrolled",
                        build_digest=digests[row.id],
                        inventory_line=row.line,
                        cert_serial=identity.cert_serial,
                        cert_not_after=cert.not_valid_after_utc.isoformat(timespec="seconds"),
                        cert_pem=identity.cert_pem.decode(),
                        password_hash=(
                            hash_password(identity.password, settings.accounts.password_iterations)
                            if identity.password
                            else None
                        ),
                        enrolled_at=now,
                        updated_at=now,
                        revoked_at=None,
                        revoke_reason=None,
                    )
                )
                if old is not None:
                    reason = "key_compromise" if "key_compromise" in why else "superseded"
                    superseded.append((old, reason, why))
                advance()
            for row, rec in plan.update:
                directory = self.fleet.bundle(row.id)
                files = self._public_files(row, inventory, psks, rec.cert_serial)
                changed = bundle.update(directory, files)
                keep = set(files) | set(bundle.SECRET_FILES) | {bundle.CERT}
                changed += bundle.remove_stale(directory, keep)
                bundle.write_manifest(directory, row.id, rec.cert_serial)
                bundle.make_tarball(directory, self.fleet.bundles_dir / f"{row.id}.tar.gz")
                updated.append((row, rec))
                log.debug("%s: updated %s", row.id, ", ".join(changed) or "nothing")
                advance()

        account_passwords: dict[str, str] = {}
        for acc in plan.accounts_new:
            account_passwords[acc.name] = new_password()
            write_file(
                self.fleet.accounts_dir / f"{acc.name}.password",
                account_passwords[acc.name] + "\n",
                0o600,
            )
        self.fleet.accounts_dir.mkdir(exist_ok=True)
        self.fleet.accounts_dir.chmod(0o700)

        with reg.transaction():
            for old, reason, why in superseded:
                reg.revoke(old, reason, why, keep_status=True)
            for rec in records:
                reg.put_gateway(rec)
                prior = "re-keyed" if any(o.id == rec.id for o, _, _ in superseded) else "enrolled"
                reg.audit(
                    prior, rec.id, f"certificate {rec.cert_serial}, {rec.district}/{rec.ward}"
                )
            for row, rec in updated:
                reg.put_gateway(
                    dataclasses.replace(
                        rec,
                        district=row.district,
                        ward=row.ward,
                        site_type=row.site_type,
                        build_digest=digests[row.id],
                        inventory_line=row.line,
                        updated_at=now,
                    )
                )
                reg.audit("updated", row.id, f"config rebuilt from {inventory.path}:{row.line}")
            for rec in plan.revoke:
                reg.revoke(rec, "cessation_of_operation", f"removed from {inventory.path}")
            for row in inventory.rows:  # where each gateway is: `provision export-sites`
                reg.put_site(row.id, row.site, row.labels)
            iterations = self.settings.accounts.password_iterations
            for acc in plan.accounts_new:
                pw_hash = hash_password(account_passwords[acc.name], iterations)
                reg.put_account(AccountRecord(acc.name, acc.role, acc.districts, pw_hash, now))
                reg.audit("account added", acc.name, f"{acc.role} {','.join(acc.districts)}")
            have = {a.name: a for a in reg.accounts()}
            for acc in plan.accounts_changed:
                reg.put_account(
                    dataclasses.replace(have[acc.name], role=acc.role, districts=acc.districts)
                )
                reg.audit("account changed", acc.name, f"{acc.role} {','.join(acc.districts)}")
            for name in plan.accounts_removed:
                reg.delete_account(name)
                reg.audit("account removed", name, "no longer wanted by fleet.toml/inventory")

        # Committed: staged bundles become real, revoked ones go.
        for rec in records:
            self._promote(rec.id)
        for rec in plan.revoke:
            shutil.rmtree(self.fleet.bundle(rec.id), ignore_errors=True)
            (self.fleet.bundles_dir / f"{rec.id}.tar.gz").unlink(missing_ok=True)
        for name in plan.accounts_removed:
            (self.fleet.accounts_dir / f"{name}.password").unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)

    def _issue(self, row: GatewayRow) -> bundle.Identity:
        key, cert = self.ca.issue_gateway(
            row.id, self.settings.pki.gateway_days, self.settings.pki.organization
        )
        password = new_password() if self.settings.accounts.gateway_passwords else None
        return bundle.Identity(
            key_pem=pki.key_pem(key),
            cert_pem=pki.cert_pem(cert),
            cert_serial=format(cert.serial_number, "x"),
            password=password,
        )

    def _public_files(
        self, row: GatewayRow, inventory: Inventory, psks: dict[str, str], serial: str
    ) -> bundle.Files:
        return bundle.public_files(
            row,
            self.settings,
            source=Path(inventory.path).name,
            ca_pem=self._ca_pem,
            cert_serial=serial,
            psk=psks.get(row.id),
            unit=self._unit_text(),
            technician_hash=self._technician_hash(row.id),
        )

    def _technician_hash(self, gateway_id: str) -> str | None:
        """The gateway's technician page password, made once (technicians/<id>.password, 0600)
        and kept with its hash (<id>.hash), so that a re-run writes the same config bytes."""
        if self.settings.device.technician_page_hours <= 0:
            return None
        from edge.localweb.auth import hash_password as page_hash

        folder = self.fleet.technicians_dir
        pw_path, hash_path = folder / f"{gateway_id}.password", folder / f"{gateway_id}.hash"
        if pw_path.exists() and hash_path.exists():
            return hash_path.read_text().strip()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = technician_password()
        write_file(pw_path, password + "\n", 0o600)
        write_file(hash_path, page_hash(password) + "\n", 0o600)
        return hash_path.read_text().strip()

    def _promote(self, gateway_id: str) -> None:
        staged = self.fleet.bundles_dir / STAGING / gateway_id
        final = self.fleet.bundle(gateway_id)
        if final.exists():
            old = self.fleet.bundles_dir / STAGING / f"{gateway_id}.old"
            os.replace(final, old)
            os.replace(staged, final)
            shutil.rmtree(old)
        else:
            os.replace(staged, final)
        tar = self.fleet.bundles_dir / STAGING / f"{gateway_id}.tar.gz"
        if tar.exists():
            os.replace(tar, self.fleet.bundles_dir / f"{gateway_id}.tar.gz")

    def _recover_staging(self, reg: Registry) -> None:
        staging = self.fleet.bundles_dir / STAGING
        if not staging.exists():
            return
        for directory in sorted(p for p in staging.iterdir() if p.is_dir()):
            if directory.name.endswith(".old"):
                continue
            rec = reg.gateway(directory.name)
            try:
                serial = format(
                    pki.load_cert((directory / bundle.CERT).read_bytes()).serial_number, "x"
                )
            except (OSError, ValueError):
                serial = None
            if rec is not None and rec.status == "enrolled" and rec.cert_serial == serial:
                log.warning(
                    "%s: finishing an interrupted run (moving its bundle into place)", rec.id
                )
                self._promote(rec.id)
        shutil.rmtree(staging)  # the rest never left this machine

    def _unit_text(self) -> str:
        if not hasattr(self, "_unit_cache"):
            self._unit_cache = find_unit(self.fleet, self.unit_path).read_text(encoding="utf-8")
        return self._unit_cache

    # --- broker files -------------------------------------------------------------------------
    def _broker_needs_ca(self, reg: Registry) -> bool:
        d = self.fleet.broker_dir
        return _server_cert_stale(d, self._server_names(), self.ca.cert) or _crl_stale(
            d, reg, self.ca, self.settings
        )

    def _server_names(self) -> list[str]:
        b = self.settings.broker
        return [b.host, *[n for n in b.alt_names if n != b.host]]

    def _broker_texts(
        self, gateways: list[GatewayEntry], accounts: list[AccountRecord]
    ) -> list[tuple[str, bytes | str, int]]:
        passwd = render_file(
            [(g.id, g.password_hash) for g in gateways if g.password_hash]
            + [(a.name, a.password_hash) for a in accounts]
        )
        acl = render_acl(
            self.settings.broker.topic_prefix,
            gateways,
            [Account(a.name, a.role, a.districts) for a in accounts],
            operator_commands(self.settings),
        )
        return [
            ("ca.crt", self._ca_pem, 0o644),
            ("passwd", passwd, 0o600),
            ("acl", acl, 0o644),
            ("wardgate.conf", render_mosquitto_conf(self.settings), 0o644),
        ]

    def _preview_broker(self, reg: Registry, plan: Plan) -> list[str]:
        """Which broker files a real run of `plan` would change (new hashes are unknowable)."""
        d = self.fleet.broker_dir
        moved = {row.id: row for row, _ in plan.update}
        gone = {rec.id for rec in plan.revoke}
        gateways = [
            GatewayEntry(
                r.id,
                moved[r.id].district if r.id in moved else r.district,
                moved[r.id].ward if r.id in moved else r.ward,
                r.password_hash,
            )
            for r in reg.gateways("enrolled")
            if r.id not in gone
        ]
        gateways += [GatewayEntry(row.id, row.district, row.ward, None) for row in plan.new]
        changed = []
        for name, data, _mode in self._broker_texts(gateways, reg.accounts()):
            path = d / name
            data = data.encode() if isinstance(data, str) else data
            if not path.exists() or path.read_bytes() != data:
                changed.append(name)
        new_passwords = plan.new or plan.rekey or plan.revoke or plan.accounts_new
        if (new_passwords or plan.accounts_removed) and "passwd" not in changed:
            changed.append("passwd")
        if (plan.new or plan.accounts_new or plan.accounts_removed) and "acl" not in changed:
            changed.append("acl")
        if _server_cert_stale(d, self._server_names(), self.ca.cert):
            changed += ["server.crt", "server.key"]
        if plan.rekey or plan.revoke or _crl_stale(d, reg, self.ca, self.settings):
            changed.append("crl.pem")
        return changed

    def _sync_broker(
        self, reg: Registry, ca: pki.CA | None, *, refresh_crl: bool = False
    ) -> list[str]:
        d = self.fleet.broker_dir
        settings = self.settings
        gateways = [
            GatewayEntry(r.id, r.district, r.ward, r.password_hash)
            for r in reg.gateways("enrolled")
        ]
        files = self._broker_texts(gateways, reg.accounts())
        changed: list[str] = []
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        if ca is not None and _server_cert_stale(d, self._server_names(), ca.cert):
            key, cert = ca.issue_server(
                self._server_names(), settings.pki.server_days, settings.pki.organization
            )
            files += [
                ("server.key", pki.key_pem(key), 0o600),
                ("server.crt", pki.cert_pem(cert), 0o644),
            ]
            with reg.transaction():
                reg.audit(
                    "server certificate", self._server_names()[0], format(cert.serial_number, "x")
                )
        if ca is not None and (refresh_crl or _crl_stale(d, reg, ca, settings)):
            with reg.transaction():
                number = reg.next_crl_number()
                revoked = [
                    (int(serial, 16), dt.datetime.fromisoformat(at), reason)
                    for serial, _gw, at, reason in reg.revocations()
                ]
                crl = ca.crl(revoked, number, settings.pki.crl_days)
                reg.audit("crl", f"#{number}", f"{len(revoked)} revoked certificate(s)")
            from cryptography.hazmat.primitives import serialization

            files.append(("crl.pem", crl.public_bytes(serialization.Encoding.PEM), 0o644))
        for name, data, mode in files:
            if write_file(d / name, data, mode):
                changed.append(name)
        return changed


def find_unit(fleet: FleetDir, unit_path: Path | None = None) -> Path:
    """wardgate.service: --unit, else the fleet's own copy, else the one shipped with wardgate."""
    candidates = [unit_path] if unit_path else []
    candidates += [
        fleet.root / "wardgate.service",
        SYSTEMD_UNIT,
    ]
    for path in candidates:
        if path is not None and path.is_file():
            return path
    raise FleetError(
        "wardgate.service not found: pass --unit FILE or put it into the fleet directory "
        f"({fleet.root / 'wardgate.service'})"
    )


def _server_cert_stale(d: Path, names: list[str], ca_cert) -> bool:
    path = d / "server.crt"
    if not path.exists() or not (d / "server.key").exists():
        return True
    cert = pki.load_cert(path.read_bytes())
    if cert.issuer != ca_cert.subject:
        return True
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    if list(san) != pki.san_entries(names):
        return True
    remaining = cert.not_valid_after_utc - pki.now()
    return remaining < dt.timedelta(days=30)


def _crl_stale(d: Path, reg: Registry, ca: pki.CA, settings: FleetSettings) -> bool:
    from cryptography import x509

    path = d / "crl.pem"
    if not path.exists():
        return True
    crl = x509.load_pem_x509_crl(path.read_bytes())
    if crl.issuer != ca.cert.subject or not crl.is_signature_valid(ca.cert.public_key()):
        return True
    listed = {format(r.serial_number, "x") for r in crl}
    if listed != {serial for serial, *_ in reg.revocations()}:
        return True
    left = crl.next_update_utc - pki.now() if crl.next_update_utc else dt.timedelta(0)
    return left < dt.timedelta(days=settings.pki.crl_days) / 3


@contextmanager
def _open_registry(fleet: FleetDir) -> Iterator[Registry]:
    reg = Registry(fleet.registry_path)
    try:
        yield reg
    finally:
        reg.close()


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    if not enabled or total < 2:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("building bundles", total=total)
        yield lambda: progress.advance(task)


@contextmanager
def _locked_dir(fleet: FleetDir) -> Iterator[None]:
    path = fleet.root / ".lock"
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetError(f"{fleet.root}: another `wardgate provision` is running") from None
        yield


#: `provision export-sites` format: bump on a change that is not an added key
SITES_FORMAT = "wardgate-sites/1"


def export_sites(fleet: FleetDir) -> dict[str, Any]:
    """Every enrolled gateway with where it is, for an operations center to import before
    any gateway has sent its birth message (format: docs/provisioning.md, "Sites")."""
    settings = fleet.settings()
    prefix = settings.broker.topic_prefix
    with _open_registry(fleet.require()) as reg:
        sites = reg.sites()
        gateways = []
        for rec in reg.gateways("enrolled"):
            site, labels, updated = sites.get(rec.id, ({}, {}, rec.updated_at))
            gateways.append(
                {
                    "id": rec.id,
                    "district": rec.district,
                    "ward": rec.ward,
                    "site_type": rec.site_type,
                    "topic": f"{prefix}/{rec.district}/{rec.ward}/{rec.id}",
                    "site": site,
                    "labels": labels,
                    "updated_at": updated,
                }
            )
    return {"format": SITES_FORMAT, "generated_at": utcnow(), "gateways": gateways}


def revoked_text(reg: Registry, rec: GatewayRecord) -> str:
    """'revoked on 2026-11-30 (key_compromise)' for a revoked gateway."""
    found = reg.revocation(rec.cert_serial)
    at, reason = found if found else (rec.revoked_at or "?", "unspecified")
    return f"revoked on {at[:10]} ({pki.reason_name(reason)})"


def status_rows(fleet: FleetDir) -> list[dict[str, str]]:
    """One dict per gateway ever enrolled, for `status` (table, CSV and JSON)."""
    with _open_registry(fleet.require()) as reg:
        out = []
        for rec in reg.gateways():
            found = reg.revocation(rec.cert_serial) if rec.status == "revoked" else None
            present = fleet.bundle(rec.id).is_dir() if rec.status == "enrolled" else False
            out.append(
                {
                    "id": rec.id,
                    "district": rec.district,
                    "ward": rec.ward,
                    "site_type": rec.site_type,
                    "hw_serial": rec.hw_serial,
                    "status": rec.status,
                    "cert_serial": rec.cert_serial,
                    "cert_expires": rec.cert_not_after,
                    "enrolled_at": rec.enrolled_at,
                    "updated_at": rec.updated_at,
                    "revoked_at": rec.revoked_at or "",
                    "revoke_reason": rec.revoke_reason or "",
                    "revoke_code": pki.reason_name(found[1]) if found else "",
                    "bundle": "yes" if present else ("-" if rec.status == "revoked" else "MISSING"),
                }
            )
        return out


def crl_status(fleet: FleetDir, warn_days: float | None = None) -> dict[str, Any]:
    """The broker CRL's dates, for `status`. state: ok, due (within warn_days: renew it),
    expired (past nextUpdate: mosquitto refuses every client) or missing."""
    from cryptography import x509

    settings = fleet.settings()
    if warn_days is None:
        warn_days = settings.pki.crl_days / 3  # when `crl --if-due` renews it
    path = fleet.broker_dir / "crl.pem"
    out: dict[str, Any] = {"path": str(path), "warn_days": warn_days}
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        out.update(state="missing", message=f"{path}: none yet; run `wardgate provision crl`")
        return out
    except ValueError as exc:
        raise FleetError(f"{path}: not a PEM CRL ({exc})") from None
    next_update = crl.next_update_utc
    left = (next_update - pki.now()).total_seconds() / 86400 if next_update else 0.0
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    out.update(
        number=number,
        last_update=crl.last_update_utc.isoformat(timespec="seconds"),
        next_update=next_update.isoformat(timespec="seconds") if next_update else None,
        days_left=round(left, 2),
        revoked=len(crl),
    )
    when = f"{next_update:%Y-%m-%d %H:%M} UTC" if next_update else "?"
    renew = f"run `wardgate provision crl {fleet.root}` and copy crl.pem to the broker"
    if left <= 0:
        out.update(
            state="expired",
            message=f"EXPIRED at {when}: mosquitto refuses every gateway until you {renew}",
        )
    elif left < warn_days:
        out.update(state="due", message=f"nextUpdate {when}, in {left:.1f} days: {renew}")
    else:
        out.update(state="ok", message=f"nextUpdate {when} (in {left:.0f} days), #{number}")
    return out


#: letters and digits a technician reads off a sheet and types on a phone without mistaking one
#: for another (no 0/O, 1/l/I)
_TECH_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def technician_password() -> str:
    """Four groups of four (about 79 bits): typed at the post, so readable, and long enough."""
    import secrets

    return "-".join("".join(secrets.choice(_TECH_ALPHABET) for _ in range(4)) for _ in range(4))
