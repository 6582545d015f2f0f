"""The enrollment registry (SQLite): who is enrolled with which certificate, what was revoked, and
an append-only audit log of every change. It holds no secrets: only hashes and certificates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 2  # 2: gateways.revoked_by

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY,
    district TEXT NOT NULL,
    ward TEXT NOT NULL,
    site_type TEXT NOT NULL,
    hw_serial TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('enrolled', 'revoked')),
    build_digest TEXT NOT NULL,      -- inputs the bundle was built from (row, settings, ...)
    inventory_line INTEGER,
    cert_serial TEXT NOT NULL,       -- hex
    cert_not_after TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    password_hash TEXT,
    enrolled_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    revoked_at TEXT,
    revoke_reason TEXT,              -- free text: why (the CRL reason is in revocations)
    revoked_by TEXT                  -- 'run' (left the inventory) or 'revoke' (`provision revoke`)
);
CREATE TABLE IF NOT EXISTS revocations (
    serial TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    reason TEXT NOT NULL            -- x509.ReasonFlags name
);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    districts TEXT NOT NULL,        -- JSON list
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sites (  -- where each gateway is, from the inventory (export-sites)
    gateway TEXT PRIMARY KEY,
    site TEXT NOT NULL,             -- JSON object: the gateway config's [site] keys that are set
    labels TEXT NOT NULL,           -- JSON object: event source -> human label
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class GatewayRecord:
    id: str
    district: str
    ward: str
    site_type: str
    hw_serial: str
    status: str
    build_digest: str
    inventory_line: int | None
    cert_serial: str
    cert_not_after: str
    cert_pem: str
    password_hash: str | None
    enrolled_at: str
    updated_at: str
    revoked_at: str | None
    revoke_reason: str | None
    revoked_by: str | None = None


@dataclasses.dataclass(frozen=True)
class AccountRecord:
    name: str
    role: str
    districts: tuple[str, ...]
    password_hash: str
    created_at: str


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        version = self.meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif int(version) > SCHEMA_VERSION:
            raise RuntimeError(f"{path}: made by a newer wardgate (schema {version}); upgrade")
        elif int(version) < 2:
            with self.transaction():
                self.db.execute("ALTER TABLE gateways ADD COLUMN revoked_by TEXT")
                self.set_meta("schema_version", str(SCHEMA_VERSION))

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- meta ---------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def next_crl_number(self) -> int:
        number = int(self.meta("crl_number") or "0") + 1
        self.set_meta("crl_number", str(number))
        return number

    # --- gateways -----------------------------------------------------------------------------
    def gateways(self, status: str | None = None) -> list[GatewayRecord]:
        query = "SELECT * FROM gateways"
        args: tuple = ()
        if status:
            query += " WHERE status = ?"
            args = (status,)
        return [GatewayRecord(*row) for row in self.db.execute(query + " ORDER BY id", args)]

    def gateway(self, gateway_id: str) -> GatewayRecord | None:
        row = self.db.execute("SELECT * FROM gateways WHERE id = ?", (gateway_id,)).fetchone()
        return GatewayRecord(*row) if row else None

    def put_gateway(self, rec: GatewayRecord) -> None:
        fields = dataclasses.asdict(rec)
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self.db.execute(
            f"INSERT OR REPLACE INTO gateways ({names}) VALUES ({marks})", tuple(fields.values())
        )

    def revoke(
        self, rec: GatewayRecord, reason: str, detail: str, *, keep_status=False, by: str = "run"
    ) -> None:
        """Put the gateway's current certificate on the CRL; unless keep_status, disable it.

        reason: a x509.ReasonFlags name; by: 'run' or 'revoke' (an explicit revoke keeps `run`
        from enrolling the same board again)."""
        at = utcnow()
        self.db.execute(
            "INSERT OR IGNORE INTO revocations (serial, gateway, revoked_at, reason) "
            "VALUES (?, ?, ?, ?)",
            (rec.cert_serial, rec.id, at, reason),
        )
        if not keep_status:
            self.db.execute(
                "UPDATE gateways SET status = 'revoked', revoked_at = ?, revoke_reason = ?, "
                "revoked_by = ?, updated_at = ? WHERE id = ?",
                (at, detail, by, at, rec.id),
            )
        self.audit("revoke", rec.id, f"certificate {rec.cert_serial} ({reason}): {detail}")

    def revocations(self) -> list[tuple[str, str, str, str]]:
        return list(
            self.db.execute(
                "SELECT serial, gateway, revoked_at, reason FROM revocations ORDER BY revoked_at"
            )
        )

    def revocation(self, serial: str) -> tuple[str, str] | None:
        """(revoked_at, x509.ReasonFlags name) of a certificate serial (hex), or None."""
        row = self.db.execute(
            "SELECT revoked_at, reason FROM revocations WHERE serial = ?", (serial,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    # --- sites --------------------------------------------------------------------------------
    def put_site(self, gateway_id: str, site: dict, labels: dict[str, str]) -> None:
        """The gateway's site and labels as last provisioned (replaces what was there; an
        unchanged one is not written, and none is no row)."""
        if not site and not labels:
            self.db.execute("DELETE FROM sites WHERE gateway = ?", (gateway_id,))
            return
        self.db.execute(
            "INSERT INTO sites (gateway, site, labels, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (gateway) DO UPDATE SET site = excluded.site, "
            "labels = excluded.labels, updated_at = excluded.updated_at "
            "WHERE site != excluded.site OR labels != excluded.labels",
            (
                gateway_id,
                json.dumps(site, sort_keys=True, ensure_ascii=False),
                json.dumps(labels, sort_keys=True, ensure_ascii=False),
                utcnow(),
            ),
        )

    def sites(self) -> dict[str, tuple[dict, dict[str, str], str]]:
        """gateway id -> (site, labels, updated_at)."""
        rows = self.db.execute("SELECT gateway, site, labels, updated_at FROM sites")
        return {g: (json.loads(s), json.loads(lab), at) for g, s, lab, at in rows}

    # --- accounts -----------------------------------------------------------------------------
    def accounts(self) -> list[AccountRecord]:
        rows = self.db.execute("SELECT * FROM accounts ORDER BY name")
        return [AccountRecord(n, r, tuple(json.loads(d)), h, c) for n, r, d, h, c in rows]

    def put_account(self, rec: AccountRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?, ?)",
            (
                rec.name,
                rec.role,
                json.dumps(list(rec.districts)),
                rec.password_hash,
                rec.created_at,
            ),
        )

    def delete_account(self, name: str) -> None:
        self.db.execute("DELETE FROM accounts WHERE name = ?", (name,))

    # --- audit --------------------------------------------------------------------------------
    def audit(self, action: str, subject: str, detail: str) -> None:
        self.db.execute(
            "INSERT INTO audit (at, action, subject, detail) VALUES (?, ?, ?, ?)",
            (utcnow(), action, subject, detail),
        )

    def audit_log(self, limit: int = 50) -> list[tuple[str, str, str, str]]:
        rows = self.db.execute(
            "SELECT at, action, subject, detail FROM audit ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return list(rows)
