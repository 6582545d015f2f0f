"""`wardgate provision ...`: bulk enrollment from an inventory (docs/provisioning.md).

Cheap to import: everything heavy is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: `provision revoke --reason` names (kept in sync with provisioning.pki.REVOKE_REASONS by a test;
#: not imported from there so that `wardgate --help` does not load cryptography)
REVOKE_REASONS = (
    "key_compromise",
    "cessation",
    "superseded",
    "affiliation_changed",
    "privilege_withdrawn",
    "unspecified",
)
TEMPLATES = ("inventory.csv", "wardgate-crl.service", "wardgate-crl.timer")


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser(
        "provision",
        help="enroll gateways from an inventory: PKI, broker accounts and ACLs, SD-card bundles",
        description="Bulk enrollment. Start with `provision init`, then `provision run`.",
    )
    psub = top.add_subparsers(dest="provision_command", metavar="ACTION", required=True)

    p = psub.add_parser("init", help="create a fleet directory: settings and an encrypted CA")
    p.add_argument("fleet", type=Path, help="fleet directory to create")
    p.add_argument("--broker-host", required=True, help="name or address gateways connect to")
    p.add_argument("--ca-name", default="wardgate fleet CA")
    p.add_argument("--ca-days", type=int, default=3650)
    p.add_argument("--import-ca-cert", type=Path, help="use an existing CA certificate (PEM)")
    p.add_argument("--import-ca-key", type=Path, help="... and its private key (PEM)")
    p.add_argument("--import-ca-key-passphrase-file", type=Path, help="if that key is encrypted")
    _passphrase_arg(p)
    p.set_defaults(func=cmd_init)

    p = psub.add_parser(
        "check-inventory",
        help="validate an inventory CSV; every problem at once (--fleet: every check `run` makes)",
    )
    p.add_argument("inventory", type=Path)
    p.add_argument(
        "--fleet",
        type=Path,
        help="also check against this fleet: its accounts, Wi-Fi passphrases, registry "
        "(a dry run of `provision run`; nothing is written)",
    )
    p.set_defaults(func=cmd_check_inventory)

    p = psub.add_parser(
        "template", help="print the inventory CSV template (or the CRL renewal timer's units)"
    )
    p.add_argument("name", nargs="?", default="inventory.csv", choices=TEMPLATES)
    p.set_defaults(func=cmd_template)

    p = psub.add_parser(
        "run", help="enroll, update and revoke so that the fleet matches the inventory"
    )
    p.add_argument("fleet", type=Path)
    p.add_argument("--inventory", "-i", type=Path, required=True)
    p.add_argument("--dry-run", "-n", action="store_true", help="show what would change")
    p.add_argument(
        "--allow-mass-revoke",
        action="store_true",
        help="allow revoking more than 10%% of the fleet in one run",
    )
    p.add_argument(
        "--reissue", action="append", default=[], metavar="ID", help="new key and certificate"
    )
    p.add_argument(
        "--reason",
        choices=("superseded", "key_compromise"),
        default="superseded",
        help="CRL reason for --reissue (default superseded)",
    )
    p.add_argument("--unit", type=Path, help="wardgate.service to ship (default: the packaged one)")
    p.add_argument("--no-progress", action="store_true")
    _passphrase_arg(p)
    p.set_defaults(func=cmd_run)

    p = psub.add_parser("verify", help="check a bundle: chain, key, config, broker connection")
    p.add_argument("bundle", type=Path, help="a bundle folder (FLEET/bundles/ID)")
    p.add_argument("--ca", type=Path, help="fleet CA to trust (default: the bundle's fleet)")
    p.add_argument("--crl", type=Path, help="CRL to check against (default: the fleet's)")
    p.add_argument("--host", help="broker host to try instead of the config's")
    p.add_argument("--port", type=int, help="broker port to try instead of the config's")
    p.add_argument("--no-connect", action="store_true", help="do not try the broker")
    p.add_argument("--require-broker", action="store_true", help="fail if it cannot be reached")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_verify)

    p = psub.add_parser(
        "status", help="enrolled and revoked gateways and the CRL's nextUpdate; --csv, --json"
    )
    p.add_argument("fleet", type=Path)
    p.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--district", action="append", default=[], metavar="D", help="only these districts"
    )
    p.add_argument(
        "--warn-days",
        type=float,
        metavar="N",
        help="warn when the CRL runs out within N days (default: a third of [pki] crl_days)",
    )
    p.add_argument(
        "--broker-user",
        metavar="NAME",
        help="also show online / last state from the broker's retained `state` messages, read "
        "with this account (an operator, backend or receiver: only its districts are seen)",
    )
    p.add_argument("--broker-password-file", type=Path, help="that account's password file")
    p.add_argument("--broker", metavar="HOST", help="default: fleet.toml [broker] host")
    p.add_argument("--broker-port", type=int, help="default: fleet.toml [broker] password_port")
    p.add_argument("--log", type=int, default=0, metavar="N", help="show the last N audit entries")
    p.set_defaults(func=cmd_status)

    p = psub.add_parser(
        "export-sites",
        help="JSON of every enrolled gateway: district, ward, topic, site, labels (for a console)",
    )
    p.add_argument("fleet", type=Path)
    p.add_argument("--out", "-o", type=Path, help="write to this file (default: stdout)")
    p.set_defaults(func=cmd_export_sites)

    p = psub.add_parser("crl", help="re-sign the CRL (before it expires) and rebuild broker files")
    p.add_argument("fleet", type=Path)
    p.add_argument(
        "--if-due",
        action="store_true",
        help="only when due (a third of crl_days left, or the registry changed): for a timer",
    )
    _passphrase_arg(p)
    p.set_defaults(func=cmd_crl)

    p = psub.add_parser(
        "revoke",
        help="revoke a gateway now: CRL re-signed, broker account removed, bundle deleted",
        description="Revoke a gateway's certificate (RFC 5280 reason codes). Copy the changed "
        "broker files to the broker and restart mosquitto afterwards.",
    )
    p.add_argument("fleet", type=Path)
    p.add_argument("gateway", help="gateway id")
    p.add_argument(
        "--reason",
        required=True,
        choices=tuple(REVOKE_REASONS),
        help="key_compromise (stolen, opened), cessation (taken out of service), superseded, "
        "affiliation_changed, privilege_withdrawn, unspecified",
    )
    p.add_argument("--note", default="", help="free text for the registry and audit log")
    _passphrase_arg(p)
    p.set_defaults(func=cmd_revoke)

    p = psub.add_parser("flash", help="write a gateway's bundle onto a mounted boot partition")
    p.add_argument("fleet", type=Path)
    p.add_argument("gateway", help="gateway id")
    p.add_argument("--boot", type=Path, required=True, help="mount point of the boot partition")
    p.add_argument(
        "--wheelhouse",
        type=Path,
        help="wheels for the card's OS and CPU (`provision wheelhouse`); default: keep the "
        "card's own if they are complete",
    )
    p.add_argument("--flavour", choices=("auto", "cloud-init", "bookworm"), default="auto")
    p.add_argument(
        "--arch", choices=("aarch64", "armv7l"), default="aarch64", help="the image's CPU"
    )
    p.add_argument(
        "--allow-uninstallable",
        action="store_true",
        help="write the card even though it cannot install wardgate offline (no or incomplete "
        "wheelhouse for its OS and CPU): only for images that already carry wardgate",
    )
    p.set_defaults(func=cmd_flash)

    p = psub.add_parser(
        "wheelhouse",
        help="download and build every wheel a gateway installs offline from its card",
        description="Every wheel `wardgate[gateway]` needs on one Raspberry Pi OS release and "
        "CPU, for `flash --wheelhouse` (docs/provisioning.md, 'Wheelhouse').",
    )
    p.add_argument("--os", required=True, choices=("bookworm", "trixie"), dest="os_name")
    p.add_argument("--arch", choices=("aarch64", "armv7l"), default="aarch64")
    p.add_argument("--out", "-o", type=Path, help="folder to fill (default: wheels/OS-ARCH)")
    p.add_argument("--source", type=Path, help="wardgate source tree (default: this one)")
    p.add_argument("--wardgate-wheel", type=Path, help="a built wardgate-*.whl instead")
    p.add_argument(
        "--constraints", type=Path, help="pins (default: the source tree's constraints.txt)"
    )
    p.add_argument("--index-url", help="package index (default: pip's)")
    p.add_argument(
        "--extra-index-url",
        action="append",
        default=[],
        help="another index, e.g. https://www.piwheels.org/simple for armv7l",
    )
    p.set_defaults(func=cmd_wheelhouse)


def _passphrase_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--passphrase-file",
        type=Path,
        help="CA passphrase file (mode 0600); default: $WARDGATE_CA_PASSPHRASE or a prompt",
    )


def _fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code


def cmd_init(args: argparse.Namespace) -> int:
    from provisioning import pki
    from provisioning.fleet import (
        FLEET_TOML_TEMPLATE,
        FleetDir,
        FleetError,
        read_passphrase,
        write_file,
    )
    from provisioning.registry import Registry

    fleet = FleetDir(args.fleet)
    if fleet.settings_path.exists() or (fleet.ca_dir / "ca.p12").exists():
        return _fail(f"{args.fleet}: already a fleet directory; nothing was changed")
    try:
        if args.import_ca_cert or args.import_ca_key:
            if not (args.import_ca_cert and args.import_ca_key):
                return _fail("give both --import-ca-cert and --import-ca-key")
            key_pw = None
            if args.import_ca_key_passphrase_file:
                key_pw = read_passphrase(
                    args.import_ca_key_passphrase_file, what="CA key passphrase"
                )
            ca = pki.import_ca(args.import_ca_cert, args.import_ca_key, key_pw)
        else:
            ca = pki.create_ca(args.ca_name, args.ca_days)
        passphrase = read_passphrase(args.passphrase_file, confirm=True)
        fleet.root.mkdir(parents=True, exist_ok=True)
        fleet.root.chmod(0o700)
        pki.save_ca(ca, fleet.ca_dir, passphrase)
        host = args.broker_host.replace('"', "")
        ca_name = ca.cert.subject.rfc4514_string().replace('"', "")
        write_file(
            fleet.settings_path, FLEET_TOML_TEMPLATE.format(host=host, ca_name=ca_name), 0o644
        )
        fleet.settings()  # the template must load
        Registry(fleet.registry_path).close()
    except FleetError as exc:
        return _fail(str(exc))
    print(f"{fleet.root}: fleet directory created")
    print(f"  CA {ca.cert.subject.rfc4514_string()}, sha256 {pki.fingerprint(ca.cert)}")
    print(
        f"  edit {fleet.settings_path}, then: wardgate provision run {fleet.root} -i INVENTORY.csv"
    )
    return 0


def cmd_check_inventory(args: argparse.Namespace) -> int:
    from provisioning.broker import name_problems
    from provisioning.fleet import BrokerSettings, FleetError, FleetSettings
    from provisioning.inventory import InventoryError, load

    try:
        inv = load(args.inventory)
    except InventoryError as exc:
        return _fail(str(exc))
    summary = f"{len(inv.rows)} gateways in {len(inv.districts)} district(s)"
    if args.fleet is None:
        # Without a fleet: the name checks `run` makes, against the default accounts.
        defaults = FleetSettings(broker=BrokerSettings(host="-"))
        problems = name_problems(defaults, inv, Path("fleet.toml (defaults)"))
        if problems:
            return _fail("\n".join(problems))
        print(f"{args.inventory}: ok, {summary}")
        print(
            "note: checked without a fleet; pass --fleet FLEET for every check `provision run` "
            "makes (its accounts, Wi-Fi passphrases, revoked gateways, mass revoke)"
        )
        return 0
    from provisioning.enroll import Enroller
    from provisioning.fleet import FleetDir

    def no_passphrase() -> bytes:
        raise FleetError("a dry run needs no passphrase")

    try:
        report = Enroller(FleetDir(args.fleet), no_passphrase).run(inv, dry_run=True)
    except FleetError as exc:
        return _fail(str(exc))
    broken = report.plan.broken
    for line in report.lines():
        print(line)
    if broken:
        return _fail(f"{args.inventory}: {len(broken)} gateway(s) would not be enrolled (see !)")
    print(f"{args.inventory}: ok against {args.fleet}, {summary}")
    return 0


def cmd_template(args: argparse.Namespace) -> int:
    from provisioning.boot import template

    sys.stdout.write(template(args.name))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from provisioning.enroll import Enroller
    from provisioning.fleet import FleetDir, FleetError, read_passphrase
    from provisioning.inventory import InventoryError, load

    try:
        inventory = load(args.inventory)
        enroller = Enroller(
            FleetDir(args.fleet),
            lambda: read_passphrase(args.passphrase_file),
            unit_path=args.unit,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
        report = enroller.run(
            inventory,
            dry_run=args.dry_run,
            allow_mass_revoke=args.allow_mass_revoke,
            reissue={gw: args.reason for gw in args.reissue},
        )
    except (FleetError, InventoryError) as exc:
        return _fail(str(exc))
    for line in report.lines():
        print(line)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from provisioning.verify import FAIL, verify

    result = verify(
        args.bundle,
        fleet_ca=args.ca,
        crl=args.crl,
        connect=not args.no_connect,
        require_broker=args.require_broker,
        host=args.host,
        port=args.port,
        timeout=args.timeout,
    )
    for check in result.checks:
        stream = sys.stderr if check.status == FAIL else sys.stdout
        print(f"{check.status:>4}  {check.name}: {check.message}", file=stream)
    print(f"{args.bundle}: {'ok' if result.ok else 'NOT OK'}")
    return 0 if result.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    import csv
    import json

    from provisioning.enroll import crl_status, status_rows
    from provisioning.fleet import FleetDir, FleetError

    fleet = FleetDir(args.fleet)
    try:
        rows = status_rows(fleet)
        crl = crl_status(fleet, args.warn_days)
    except FleetError as exc:
        return _fail(str(exc))
    if args.district:
        wanted = {d.lower() for d in args.district}
        rows = [r for r in rows if r["district"].lower() in wanted]
    if args.broker_user:
        from provisioning.liveness import LivenessError

        try:
            states = _broker_states(fleet, args)
        except (LivenessError, FleetError) as exc:
            return _fail(f"broker: {exc}")
        for r in rows:
            state = states.get(r["id"], {})
            online = state.get("online")
            r["online"] = {True: "yes", False: "no"}.get(online, "")
            r["state_at"] = state.get("state_at", "")
            install = state.get("install") if isinstance(state.get("install"), dict) else {}
            r["install"] = (
                f"{install.get('result', '?')} {str(install.get('installed_at', ''))[:16]} "
                f"v{install.get('version', '?')}"
                if install
                else ""
            )
    # An expired CRL (or none while gateways are enrolled) locks every gateway out: exit 1.
    locked_out = crl["state"] == "expired" or (
        crl["state"] == "missing" and any(r["status"] == "enrolled" for r in rows)
    )
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            fields = list(rows[0]) if rows else ["id"]
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        doc = {"format": "wardgate-status/1", "crl": crl, "gateways": rows}
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return 1 if locked_out else 0
    _print_status(rows)
    _print_crl(crl)
    if args.log:
        from provisioning.registry import Registry

        reg = Registry(fleet.registry_path)
        try:
            for at, action, subject, detail in reversed(reg.audit_log(args.log)):
                print(f"{at}  {action:<18} {subject:<20} {detail}")
        finally:
            reg.close()
    if args.csv:
        print(f"written: {args.csv}")
    return 1 if locked_out else 0


def _broker_states(fleet, args: argparse.Namespace) -> dict:
    from protocol import mqtt as policy
    from provisioning.liveness import retained_states

    settings = fleet.settings()
    if args.broker_password_file is None:
        from provisioning.fleet import FleetError

        raise FleetError("--broker-user needs --broker-password-file")
    endpoint = policy.Endpoint(
        host=args.broker or settings.broker.host,
        port=args.broker_port or settings.broker.password_port,
        tls=policy.Tls(fleet.ca_dir / "ca.crt"),
        username=args.broker_user,
        password_file=args.broker_password_file,
        keepalive_s=10,
        setting="status",
        names={
            "username": "--broker-user",
            "password": "--broker-password-file",
            "password_file": "--broker-password-file",
            "tls": "the fleet CA",
            "tls.ca": f"the fleet CA ({fleet.ca_dir / 'ca.crt'})",
        },
    )
    return retained_states(endpoint, settings.broker.topic_prefix)


def _print_crl(crl: dict) -> None:
    from rich.console import Console

    style = {"ok": None, "due": "yellow", "expired": "bold red", "missing": "bold red"}
    Console(width=120 if not sys.stdout.isatty() else None, highlight=False).print(
        f"CRL: {crl['message']}", style=style[crl["state"]]
    )


def _print_status(rows: list[dict[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    enrolled = sum(r["status"] == "enrolled" for r in rows)
    missing = sum(r["bundle"] == "MISSING" for r in rows)
    table = Table(title=f"{enrolled} enrolled, {len(rows) - enrolled} revoked")
    columns = ["id", "district", "ward", "site_type", "status", "cert_expires", "bundle"]
    live = bool(rows) and "online" in rows[0]
    for column in columns + (["online", "state_at", "install"] if live else []):
        table.add_column(column)
    for r in rows:
        style = "red" if r["status"] == "revoked" or r["bundle"] == "MISSING" else None
        status = r["status"]
        if status == "revoked":
            status = f"revoked {r['revoked_at'][:10]} ({r['revoke_code'] or 'unspecified'})"
        cells = [r["id"], r["district"], r["ward"], r["site_type"], status,
                 r["cert_expires"][:10], r["bundle"]]  # fmt: skip
        if live:
            cells += [r["online"] or "?", r["state_at"].replace("T", " ")[:16],
                      r.get("install") or "-"]  # fmt: skip
        table.add_row(*cells, style=style)
    Console(width=120 if not sys.stdout.isatty() else None).print(table)
    if missing:
        print(f"{missing} enrolled gateway(s) have no bundle folder", file=sys.stderr)


def cmd_export_sites(args: argparse.Namespace) -> int:
    import json

    from provisioning.enroll import export_sites
    from provisioning.fleet import FleetDir, FleetError, write_file

    try:
        doc = export_sites(FleetDir(args.fleet))
    except FleetError as exc:
        return _fail(str(exc))
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        write_file(args.out, text, 0o644)
        print(f"written: {args.out} ({len(doc['gateways'])} gateways)")
    else:
        sys.stdout.write(text)
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    from provisioning.enroll import Enroller
    from provisioning.fleet import FleetDir, FleetError, read_passphrase

    try:
        enroller = Enroller(FleetDir(args.fleet), lambda: read_passphrase(args.passphrase_file))
        changed = enroller.sync_broker(refresh_crl=not args.if_due)
    except FleetError as exc:
        return _fail(str(exc))
    print(f"broker files changed: {', '.join(changed) or 'none'}")
    if changed:
        print("copy them to the broker and restart mosquitto")
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    from provisioning.bundle import flash
    from provisioning.fleet import FleetDir, FleetError
    from provisioning.verify import verify

    fleet = FleetDir(args.fleet)
    revoked = _revoked(fleet, args.gateway)
    if revoked:
        return _fail(f"{args.gateway}: {revoked}; not writing it to a card")
    directory = fleet.bundle(args.gateway)
    checked = verify(directory, connect=False)
    if not checked.ok:
        for check in checked.checks:
            print(f"{check.status:>4}  {check.name}: {check.message}", file=sys.stderr)
        return _fail(f"{directory}: does not verify; not writing it to a card")
    try:
        with _CopyProgress() as progress:
            flavour = flash(
                directory,
                args.boot,
                wheelhouse=args.wheelhouse,
                flavour=args.flavour,
                arch=args.arch,
                allow_uninstallable=args.allow_uninstallable,
                say=lambda message: print(message, file=sys.stderr),
                progress=progress,
            )
    except FleetError as exc:
        return _fail(str(exc))
    print(f"{args.boot}: gateway {args.gateway} written ({flavour} first boot)")
    print(f"{args.boot}: all files synced to the card: safe to eject")
    return 0


class _CopyProgress:
    """Progress of the wheels' copy (~80 MB onto a slow card): a bar on a terminal, a line per
    10 % otherwise (logs, tests)."""

    def __enter__(self) -> _CopyProgress:
        self._bar = None
        self._step = -1
        return self

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self._bar is None:
                from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

                self._bar = Progress(
                    *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn()
                )
                self._bar.start()
                self._task = self._bar.add_task("copying wheels", total=total)
            self._bar.update(self._task, completed=done)
            return
        step = done * 10 // max(total, 1)
        if step != self._step:
            self._step = step
            print(
                f"copying wheels: {done / 1e6:.1f} of {total / 1e6:.1f} MB ({step * 10} %)",
                file=sys.stderr,
            )

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def cmd_wheelhouse(args: argparse.Namespace) -> int:
    from provisioning import wheelhouse as wh

    tgt = wh.target(args.os_name, args.arch)
    out = args.out or Path("wheels") / tgt.name
    pip_args = [a for url in args.extra_index_url for a in ("--extra-index-url", url)]
    if args.index_url:
        pip_args += ["--index-url", args.index_url]
    try:
        built = wh.build(
            tgt,
            out,
            source=args.source,
            wardgate_wheel=args.wardgate_wheel,
            constraints=args.constraints,
            pip_args=pip_args,
        )
    except wh.WheelhouseError as exc:
        return _fail(str(exc))
    print(f"{out}: {built.wheels} wheels, {built.bytes / 1e6:.1f} MB, complete for {tgt.describe}")
    print(f"  flash with: wardgate provision flash FLEET ID --boot MOUNT --wheelhouse {out}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from provisioning import pki
    from provisioning.enroll import Enroller
    from provisioning.fleet import FleetDir, FleetError, read_passphrase

    try:
        enroller = Enroller(FleetDir(args.fleet), lambda: read_passphrase(args.passphrase_file))
        message, changed = enroller.revoke(args.gateway, pki.REVOKE_REASONS[args.reason], args.note)
    except FleetError as exc:
        return _fail(str(exc))
    print(message)
    if changed:
        print(f"broker files changed: {', '.join(changed)}")
        print("copy them to the broker and restart mosquitto: until then it still accepts it")
    return 0


def _revoked(fleet, gateway_id: str) -> str | None:
    """'revoked on DATE (reason)' if the registry says so, else None."""
    from provisioning.enroll import revoked_text
    from provisioning.registry import Registry

    if not fleet.registry_path.is_file():
        return None
    reg = Registry(fleet.registry_path)
    try:
        rec = reg.gateway(gateway_id)
        return revoked_text(reg, rec) if rec is not None and rec.status == "revoked" else None
    finally:
        reg.close()
