"""A fleet directory: its settings (fleet.toml), its layout, and how secrets are read and written.

fleet.toml             settings: broker address, certificate lifetimes, accounts, device setup
wifi-psk.toml          Wi-Fi passphrases by SSID (0600, optional; never in the inventory)
registry.sqlite3       enrollment registry and audit log
ca/                    ca.crt, ca.key (encrypted with the CA passphrase), crl.pem
broker/                everything the broker host needs (see docs/provisioning.md)
accounts/<name>.password   receiver, operator and backend passwords (0600)
technicians/<id>.password  each gateway's technician page password (0600; .hash beside it)
bundles/<id>/          per-gateway bundle; bundles/<id>.tar.gz the same as one file
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import stat
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from edge.confbase import Section, TopicSegment
from protocol.topics import DEFAULT_PREFIX, check_segment
from provisioning.passwd import DEFAULT_ITERATIONS, MAX_ITERATIONS

PASSPHRASE_ENV = "WARDGATE_CA_PASSPHRASE"
MIN_PASSPHRASE = 12

Days = Annotated[int, Field(ge=1, le=36500)]
Port = Annotated[int, Field(ge=1, le=65535)]


class FleetError(Exception):
    """A problem with the fleet directory or its settings; the message says what to do."""


class BrokerSettings(Section):
    host: str = Field(description="name or address the gateways connect to (in the server cert)")
    alt_names: list[str] = Field(default_factory=list, description="more DNS names / IPs")
    cert_port: Port = Field(8883, description="TLS listener with client certificates: gateways")
    password_port: Port = Field(8884, description="TLS listener with passwords: people, apps")
    bind: str | None = Field(None, description="listener bind address; default: all")
    install_dir: str = Field("/etc/mosquitto/wardgate", description="broker files on the broker")
    topic_prefix: str = DEFAULT_PREFIX


class PKISettings(Section):
    ca_name: str = "wardgate fleet CA"
    organization: str | None = None
    ca_days: Days = 3650
    gateway_days: Days = 825
    server_days: Days = 825
    crl_days: Days = Field(30, description="mosquitto refuses every client once the CRL expires")


class ReceiverAccount(Section):
    name: TopicSegment
    districts: list[TopicSegment] = Field(min_length=1)


def _district_or_star(value: str) -> str:
    return value if value == "*" else check_segment(value)


#: a district, or "*" for all of them
DistrictOrStar = Annotated[str, AfterValidator(_district_or_star)]


class OperatorAccount(Section):
    """One person at the operations center who sends commands (`wardgate cmd`): reads the whole
    subtree of its districts, writes the commands gateways answer there. One account per person,
    so the broker's log and the gateways' answers name who did it; `districts` is required
    (write `["*"]` for the whole city on purpose, never by default)."""

    name: TopicSegment
    districts: list[DistrictOrStar] = Field(min_length=1)


class BackendAccount(Section):
    """An integrator's read-only account: events, state, telemetry and snapshots of its
    districts; it may write nothing."""

    name: TopicSegment
    districts: list[DistrictOrStar] = Field(min_length=1)


def _command_name(name: str) -> str:
    if name == "res":
        raise ValueError("cmd/res carries the gateways' answers; it is not a command")
    return name


CommandName = Annotated[TopicSegment, AfterValidator(_command_name)]


class AccountSettings(Section):
    password_iterations: int = Field(DEFAULT_ITERATIONS, ge=1, le=MAX_ITERATIONS)
    gateway_passwords: bool = Field(True, description="also give each gateway a password")
    receiver_per_district: bool = Field(True, description="an `rx-<district>` account each")
    receiver: list[ReceiverAccount] = Field(default_factory=list)
    operator: list[OperatorAccount] = Field(
        default_factory=list, description="per-person command accounts (none by default)"
    )
    backend: list[BackendAccount] = Field(default_factory=list, description="read-only accounts")
    extra_commands: list[CommandName] = Field(
        default_factory=list,
        description="commands operators may send besides the built-in ones (broker.COMMANDS)",
    )


class DeviceSettings(Section):
    hostname_prefix: str = "wg-"
    admin_user: str = Field("wgadmin", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    ssh_authorized_keys: list[str] = Field(default_factory=list)
    timezone: str = "Etc/UTC"
    keymap: str = "us"
    wlan_country: str | None = Field(None, pattern=r"^[A-Z]{2}$")
    config_dir: str = "/etc/wardgate"
    venv: str = Field("/opt/wardgate/venv", description="as edge/deploy/wardgate.service expects")
    check_hw_serial: bool = Field(True, description="refuse to install on another board")
    technician_page_hours: float = Field(
        4.0,
        ge=0,
        le=72,
        description="the technician's page (docs/localweb.md) is open this long after each "
        "boot, on the LAN only, with the gateway's own password from technicians/; 0 = off",
    )


class FleetSettings(Section):
    broker: BrokerSettings
    pki: PKISettings = PKISettings()
    accounts: AccountSettings = AccountSettings()
    device: DeviceSettings = DeviceSettings()
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="merged into every gateway config, e.g. [config.health] heartbeat_s = 60",
    )


FLEET_TOML_TEMPLATE = """\
# wardgate fleet settings. Reference: docs/provisioning.md
[broker]
host = "{host}"              # what gateways connect to; goes into the broker certificate
alt_names = []               # more DNS names or IP addresses of the broker
cert_port = 8883             # TLS + client certificates (gateways)
password_port = 8884         # TLS + passwords (fire-brigade receivers, operators)
install_dir = "/etc/mosquitto/wardgate"

[pki]
ca_name = "{ca_name}"
gateway_days = 825
server_days = 825
crl_days = 30                # re-run `wardgate provision crl` before this runs out

[accounts]
password_iterations = 101    # see docs/provisioning.md, "Password hashes"
receiver_per_district = true # rx-<district>: the operations center's ingest for that district
# extra_commands = []        # commands operators may send besides the gateway's built-in ones

# One operator account per person who sends commands (`wardgate cmd`), scoped to the
# districts they answer for ("*" = all of them). A new fleet has none.
# [[accounts.operator]]
# name = "anna.k"
# districts = ["d03"]

# Read-only accounts for integrators: events, state, telemetry, snapshots of their districts.
# [[accounts.backend]]
# name = "police-records"
# districts = ["d03", "d04"]

[device]
admin_user = "wgadmin"
ssh_authorized_keys = []     # e.g. ["ssh-ed25519 AAAA... tech@laptop"]
timezone = "Etc/UTC"
# wlan_country = "GB"        # required when a gateway uses Wi-Fi
# technician_page_hours = 4  # the technician's page is open this long after each boot (LAN
                             # only; password in technicians/<gateway>.password); 0 = off

# Merged into every gateway's config.toml (see docs/config.md):
# [config.health]
# heartbeat_s = 60
"""


@dataclasses.dataclass(frozen=True)
class FleetDir:
    root: Path

    @property
    def settings_path(self) -> Path:
        return self.root / "fleet.toml"

    @property
    def wifi_path(self) -> Path:
        return self.root / "wifi-psk.toml"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.sqlite3"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def accounts_dir(self) -> Path:
        return self.root / "accounts"

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def technicians_dir(self) -> Path:
        """technicians/<gateway>.password (0600): each gateway's technician page password;
        the bundle carries only its hash."""
        return self.root / "technicians"

    def bundle(self, gateway_id: str) -> Path:
        return self.bundles_dir / gateway_id

    def require(self) -> FleetDir:
        if not self.settings_path.exists():
            raise FleetError(
                f"{self.root}: not a fleet directory (no fleet.toml); "
                f"create one with `wardgate provision init {self.root}`"
            )
        return self

    def settings(self) -> FleetSettings:
        return load_settings(self.require().settings_path)

    def wifi_passphrases(self) -> dict[str, str]:
        path = self.wifi_path
        if not path.exists():
            return {}
        check_private(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise FleetError(f"{path}: not valid TOML: {exc}") from None
        psk = data.get("psk", {})
        if not isinstance(psk, dict) or not all(isinstance(v, str) for v in psk.values()):
            raise FleetError(f'{path}: write passphrases as [psk] then "SSID" = "passphrase"')
        return psk


def load_settings(path: Path) -> FleetSettings:
    from edge.confbase import ConfigError, parse_model

    try:
        return parse_model(FleetSettings, path.read_text(encoding="utf-8"), path)
    except ConfigError as exc:
        raise FleetError(str(exc)) from None


# --- secrets ------------------------------------------------------------------------------------


def write_file(path: Path, data: bytes | str, mode: int = 0o644) -> bool:
    """Atomically write `path` with `mode` unless it already holds exactly `data`.

    Secrets are created with their final mode (never world-readable for an instant). Returns
    whether the file changed, so that reruns can say precisely what they touched.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        if path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == mode:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True


def check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise FleetError(
            f"{path}: holds secrets but is readable by others (mode {mode:04o}); "
            f"run `chmod 600 {path}`"
        )


def read_passphrase(
    passphrase_file: Path | None = None, *, confirm: bool = False, what: str = "CA passphrase"
) -> bytes:
    """From --passphrase-file, else $WARDGATE_CA_PASSPHRASE, else a prompt on a terminal."""
    if passphrase_file is not None:
        check_private(passphrase_file)
        value = passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
    elif os.environ.get(PASSPHRASE_ENV):
        value = os.environ[PASSPHRASE_ENV]
    elif sys.stdin.isatty():
        value = getpass.getpass(f"{what}: ")
        if confirm and getpass.getpass(f"{what} again: ") != value:
            raise FleetError("the two passphrases differ; nothing was written")
    else:
        raise FleetError(
            f"the {what} is needed: set {PASSPHRASE_ENV}, pass --passphrase-file FILE (mode "
            "0600), or run on a terminal to be asked"
        )
    if confirm and len(value) < MIN_PASSPHRASE:
        raise FleetError(f"choose a {what} of at least {MIN_PASSPHRASE} characters")
    if not value:
        raise FleetError(f"the {what} is empty")
    return value.encode("utf-8")
