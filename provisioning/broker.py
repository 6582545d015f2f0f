"""What the broker needs to trust the fleet: accounts, password file, ACL, mosquitto.conf.

Everything here is a pure function of the registry and fleet.toml, so the broker files can always
be rebuilt and a rerun writes the same bytes.

Who may do what (topic tree: protocol/topics.py, docs/topics.md):
  gateway    writes its own state, evt/#, tele, snap/#, cmd/res; reads its own cmd/# and ack
  receiver   the operations center's ingest: reads evt/alarm, evt/fault, evt/smoke, state, tele
             and snap/+ of its district(s); writes ack there
  operator   one person: reads everything in its district(s) ('*' = all); writes cmd/<name>
             there, for each command a gateway answers (never cmd/res: see COMMANDS)
  backend    an integrator, read-only: evt/#, state, tele and snap/+ of its district(s)
             ('*' = all); writes nothing
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.topics import GATEWAY_COMMANDS, GatewayTopics, district_filter
from provisioning.fleet import FleetSettings

if TYPE_CHECKING:
    from provisioning.inventory import Inventory

ROLES = ("gateway", "receiver", "operator", "backend")

#: what each account role reads below a gateway of its districts (the operator: everything)
RECEIVER_READS = ("evt/alarm", "evt/fault", "evt/smoke", "state", "tele", "snap/+")
BACKEND_READS = ("evt/#", "state", "tele", "snap/+")

#: Operators are granted write on exactly these `cmd/<name>` topics, not on `cmd/#`: Mosquitto's
#: ACL cannot take one topic (cmd/res, the gateways' answers) out of a write grant without also
#: taking it out of the operators' reads (`topic deny` denies both). A fleet can grant newer
#: commands in fleet.toml `[accounts] extra_commands`.
COMMANDS = GATEWAY_COMMANDS


#: Names that no gateway and no account may take (compared case-insensitively): Mosquitto's
#: own, those a bridge or an admin tool of the broker host would use, and this tool's.
RESERVED_NAMES = frozenset(
    {"admin", "anonymous", "bridge", "broker", "mosquitto", "root", "wardgate"}
)
#: Gateway ids may not start with this while `receiver_per_district` makes `rx-<district>`
#: accounts: a later district would otherwise turn a gateway's name into a receiver's.
RECEIVER_PREFIX = "rx-"


@dataclasses.dataclass(frozen=True)
class Account:
    name: str
    role: str  # receiver | operator | backend
    districts: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GatewayEntry:
    id: str
    district: str
    ward: str
    password_hash: str | None


def wanted_accounts(settings: FleetSettings, districts: Iterable[str]) -> list[Account]:
    """The receiver, operator and backend accounts that fleet.toml and the inventory ask for."""
    accounts: dict[str, Account] = {}
    cfg = settings.accounts
    if cfg.receiver_per_district:
        for district in sorted(set(districts)):
            accounts[f"rx-{district}"] = Account(f"rx-{district}", "receiver", (district,))
    for rx in cfg.receiver:
        accounts[rx.name] = Account(rx.name, "receiver", tuple(rx.districts))
    for op in cfg.operator:
        accounts[op.name] = Account(op.name, "operator", tuple(op.districts))
    for be in cfg.backend:
        accounts[be.name] = Account(be.name, "backend", tuple(be.districts))
    return sorted(accounts.values(), key=lambda a: a.name)


def name_problems(settings: FleetSettings, inventory: Inventory, settings_path: Path) -> list[str]:
    """Every clash between a gateway id and a broker account name, as file:line problems.

    A gateway id is the gateway's MQTT username and (forced by the broker) its client id, and
    the ACL is keyed by username: a gateway named like an account would get that account's
    rights merged into its own, and the two would disconnect each other."""
    problems: list[str] = []
    toml_lines = _account_lines(settings_path)
    roles: dict[str, list[tuple[str, int | None]]] = {}
    for role, entries in (("receiver", settings.accounts.receiver),
                          ("operator", settings.accounts.operator),
                          ("backend", settings.accounts.backend)):  # fmt: skip
        for entry in entries:
            roles.setdefault(entry.name.lower(), []).append((role, toml_lines.get(entry.name)))
    for name, uses in sorted(roles.items()):
        where = ", ".join(f"{settings_path}:{line}" for _, line in uses if line) or settings_path
        kinds = sorted({role for role, _ in uses})
        if len(kinds) > 1:
            named = [f"{'an' if k[0] in 'aeiou' else 'a'} {k}" for k in kinds]
            roles_text = ("both " if len(named) == 2 else "") + (
                ", ".join(named[:-1]) + " and " + named[-1])  # fmt: skip
            problems.append(f"{where}: account name {name!r} is {roles_text}; "
                            "each account needs its own name")  # fmt: skip
        elif len(uses) > 1:
            problems.append(f"{where}: {kinds[0]} account name {name!r} is given twice")
        if name in RESERVED_NAMES:
            problems.append(f"{where}: account name {name!r} is reserved "
                            f"({', '.join(sorted(RESERVED_NAMES))}); choose another")  # fmt: skip
    accounts = {a.name.lower(): a for a in wanted_accounts(settings, inventory.districts)}
    per_district = settings.accounts.receiver_per_district
    for row in inventory.rows:
        key = row.id.lower()
        here = f"{inventory.path}:{row.line}: id: {row.id!r}"
        account = accounts.get(key)
        if account is not None:
            line = toml_lines.get(account.name)
            origin = f"{settings_path}:{line}" if line else (
                f"{settings_path}: receiver_per_district = true")  # fmt: skip
            problems.append(
                f"{here} is also the name of the {account.role} account {account.name!r} "
                f"({origin}). A gateway id is its MQTT username "
                "and client id: the two would share ACL rights and disconnect each other; "
                "rename the gateway or the account"
            )
        elif key in RESERVED_NAMES:
            problems.append(f"{here} is reserved ({', '.join(sorted(RESERVED_NAMES))}); "
                            "choose another gateway id")  # fmt: skip
        elif per_district and key.startswith(RECEIVER_PREFIX):
            problems.append(
                f"{here}: the prefix {RECEIVER_PREFIX!r} is reserved for the per-district "
                f"receiver accounts ({settings_path}: receiver_per_district = true); choose "
                "another gateway id"
            )
    return problems


def _account_lines(settings_path: Path) -> dict[str, int]:
    """name -> line of `name = "..."` in fleet.toml (for error messages only)."""
    out: dict[str, int] = {}
    try:
        text = settings_path.read_text(encoding="utf-8")
    except OSError:
        return out
    for number, line in enumerate(text.splitlines(), start=1):
        m = re.match(r"""\s*name\s*=\s*["']([^"']+)["']""", line)
        if m:
            out.setdefault(m.group(1).strip(), number)
    return out


def operator_commands(settings: FleetSettings) -> tuple[str, ...]:
    extra = [c for c in settings.accounts.extra_commands if c not in COMMANDS]
    return COMMANDS + tuple(dict.fromkeys(extra))


def render_acl(
    prefix: str,
    gateways: list[GatewayEntry],
    accounts: list[Account],
    commands: Sequence[str] = COMMANDS,
) -> str:
    out = [
        "# wardgate broker ACL. Generated by `wardgate provision run` from the enrollment",
        "# registry: edit the inventory or fleet.toml and re-run rather than this file.",
        "# Anything not granted here is denied.",
        "",
    ]
    for account in accounts:
        out.append(f"# {account.role} for district(s) {', '.join(account.districts)}")
        out.append(f"user {account.name}")
        for district in account.districts:
            d = "+" if district == "*" else district
            if account.role == "receiver":
                out += [f"topic read {district_filter(prefix, d, leaf)}" for leaf in RECEIVER_READS]
                out.append(f"topic write {district_filter(prefix, d, 'ack')}")
            elif account.role == "backend":
                out += [f"topic read {district_filter(prefix, d, leaf)}" for leaf in BACKEND_READS]
            elif account.role == "operator":
                out.append(f"topic read {prefix}/{d}/#")
                out += [f"topic write {district_filter(prefix, d, 'cmd/' + c)}" for c in commands]
        out.append("")
    for gw in sorted(gateways, key=lambda g: g.id):
        t = GatewayTopics(prefix, gw.district, gw.ward, gw.id)
        out += [
            f"# gateway {gw.district}/{gw.ward}",
            f"user {gw.id}",
            f"topic write {t.state}",
            f"topic write {t.base}/evt/#",
            f"topic write {t.tele}",
            f"topic write {t.base}/snap/#",
            f"topic write {t.cmd_res}",
            f"topic read {t.cmd_filter}",
            f"topic read {t.ack}",
            "",
        ]
    return "\n".join(out)


def render_mosquitto_conf(
    settings: FleetSettings,
    *,
    files_dir: str | None = None,
    bind: str | None = None,
    cert_port: int | None = None,
    password_port: int | None = None,
) -> str:
    """A conf.d snippet: global auth settings and the two TLS listeners."""
    b = settings.broker
    d = (files_dir or b.install_dir).rstrip("/")
    bind = bind if bind is not None else b.bind
    where = f" {bind}" if bind else ""
    tls = [f"cafile {d}/ca.crt", f"certfile {d}/server.crt", f"keyfile {d}/server.key"]
    return "\n".join(
        [
            "# wardgate broker settings (mosquitto 2.0). Generated by `wardgate provision run`.",
            f"# Install: copy the broker/ folder to {b.install_dir}, readable by the mosquitto",
            "# user only; put this file into /etc/mosquitto/conf.d/ and restart mosquitto.",
            "# After a rerun that changed passwd or acl: `systemctl reload mosquitto` (SIGHUP);",
            "# after one that changed crl.pem or the server certificate: restart mosquitto.",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {d}/passwd",
            f"acl_file {d}/acl",
            "# A retained message is replayed only while its publisher may still write there:",
            "# what a removed gateway left retained (state, or a forged retained event) dies",
            "# with it. (mosquitto.conf(5) calls this the default; 2.0.11 does it only when set.)",
            "check_retain_source true",
            "# An alarm is a small packet: do not let Nagle's algorithm hold it for a delayed",
            "# ACK behind other small writes (tens of ms; docs/performance.md).",
            "set_tcp_nodelay true",
            "",
            "# Gateways: TLS with a client certificate from the fleet CA. Its CN (the gateway id)",
            "# is the username the ACL applies to; revoked certificates are refused (crlfile).",
            "# Client id := username on both listeners: whatever id a client asks for, it gets",
            "# its own account's, so no account can take over (disconnect) a gateway's",
            "# connection or session; a second connection of one account replaces the first.",
            f"listener {cert_port or b.cert_port}{where}",
            *tls,
            f"crlfile {d}/crl.pem",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            "tls_version tlsv1.2",
            "",
            "# Receivers, operators, backends (and gateways without a certificate): TLS with a",
            "# server certificate, then username and password from the password file.",
            f"listener {password_port or b.password_port}{where}",
            *tls,
            "use_username_as_clientid true",
            "tls_version tlsv1.2",
            "",
        ]
    )
