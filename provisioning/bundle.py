"""A gateway's bundle: its config, identity and first-boot files, as a folder and a tarball.

bundles/<id>/
  MANIFEST.json                  gateway, certificate, sha256 of every file
  README.txt                     what a technician does with it
  boot/                          what goes onto the SD card's boot partition:
    wardgate/                      (both OS generations)
      install.sh gateway.env wardgate.service
      etc/                         -> /etc/wardgate on the gateway (0600)
        config.toml mqtt.password tls/ca.crt tls/gateway.crt tls/gateway.key
      network/*.nmconnection       static addressing on Bookworm (0600)
    cloud-init/                    user-data meta-data network-config -> partition root
    bookworm/                      custom.toml firstrun.sh -> partition root;
                                   cmdline-append.txt is appended to cmdline.txt
bundles/<id>.tar.gz
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

import tomli_w

from edge.layering import CURRENT_VERSION, VERSION_KEY, Layer, VersionError, merge, migrate
from provisioning import boot
from provisioning.fleet import FleetError, FleetSettings, write_file
from provisioning.inventory import Camera, GatewayRow

SECRET = 0o600
PUBLIC = 0o644
SCRIPT = 0o755

PAYLOAD = "boot/wardgate"
ETC = f"{PAYLOAD}/etc"
CONFIG = f"{ETC}/config.toml"
PASSWORD = f"{ETC}/mqtt.password"
CA_CERT = f"{ETC}/tls/ca.crt"
CERT = f"{ETC}/tls/gateway.crt"
KEY = f"{ETC}/tls/gateway.key"
SECRET_FILES = (KEY, PASSWORD)
MANIFEST = "MANIFEST.json"

log = logging.getLogger("wardgate.provision")

Files = dict[str, tuple[bytes, int]]


@dataclasses.dataclass(frozen=True)
class Identity:
    key_pem: bytes
    cert_pem: bytes
    cert_serial: str
    password: str | None


def device_path(settings: FleetSettings, rel: str) -> str:
    """Where a file under boot/wardgate/etc/ ends up on the gateway."""
    return settings.device.config_dir.rstrip("/") + "/" + rel[len(ETC) + 1 :]


def config_dict(
    row: GatewayRow, settings: FleetSettings, technician_hash: str | None = None
) -> dict[str, Any]:
    b = settings.broker
    uplink: dict[str, Any] = {
        "host": b.host,
        "port": b.cert_port,
        "username": row.id,
        "topic_prefix": b.topic_prefix,
        "tls": {
            "ca": device_path(settings, CA_CERT),
            "cert": device_path(settings, CERT),
            "key": device_path(settings, KEY),
        },
    }
    if settings.accounts.gateway_passwords:
        uplink["password_file"] = device_path(settings, PASSWORD)
    conf: dict[str, Any] = {
        VERSION_KEY: CURRENT_VERSION,
        "gateway": {
            "id": row.id,
            "district": row.district,
            "ward": row.ward,
            "site_type": row.site_type,
        },
        "uplink": uplink,
        "outbox": {"path": "/var/lib/wardgate/outbox.sqlite3"},
        "health": {"heartbeat_s": 30.0, "watchdog": True},
    }
    if row.site:
        conf["site"] = dict(row.site)
    if row.cameras:
        conf["vision"] = {
            "cameras": [camera_entry(c, row.labels.get(f"cam/{c.name}")) for c in row.cameras]
        }
    if row.sensors:
        conf["serial"] = {"ports": [port.config_entry(row.labels) for port in row.sensors]}
    hours = settings.device.technician_page_hours
    if technician_hash is not None and hours > 0:
        # open after each boot for `hours`, to clients on the LAN only (docs/localweb.md)
        conf["localweb"] = {
            "enabled": True,
            "bind": "lan",
            "enabled_for_s": hours * 3600.0,
            "password_hash": technician_hash,
        }
    return merge(conf, fleet_config(settings))


def fleet_config(settings: FleetSettings) -> dict[str, Any]:
    """fleet.toml's `[config.*]`, migrated to the current config version like any config file
    (its own `config_version`, absent: 1), ready to merge with the gateway's one merge rule."""
    layer = Layer("fleet.toml [config]", copy.deepcopy(settings.config), {})
    try:
        for note in migrate(layer):
            log.warning("%s", note)
    except VersionError as exc:
        raise FleetError(str(exc)) from None
    layer.data.pop(VERSION_KEY, None)
    return layer.data


def camera_entry(camera: Camera, label: str | None = None) -> dict[str, Any]:
    """An inventory camera as a `[[vision.cameras]]` table (edge/vision/config.py)."""
    return camera.config_entry(label)


def render_config(
    row: GatewayRow, settings: FleetSettings, source: str, technician_hash: str | None = None
) -> str:
    """The gateway's config.toml, checked with the gateway's own loader before it is written."""
    from edge.config import ConfigError, from_dict

    data = config_dict(row, settings, technician_hash)
    text = (
        f"# wardgate config for gateway {row.id} ({row.district}/{row.ward}, {row.site_type}).\n"
        f"# Generated by `wardgate provision run` from {source} line {row.line}; edit the\n"
        "# inventory or fleet.toml and re-run rather than this file. Reference: docs/config.md\n"
        "# Site overrides go into /etc/wardgate/conf.d/*.toml: a re-flash never touches them.\n"
        + tomli_w.dumps(data)
    )
    try:
        from_dict(data, "config.toml", text)
    except ConfigError as exc:
        raise FleetError(
            f"{source}:{row.line}: the config generated for {row.id} is invalid (check the "
            "[config] table of fleet.toml):\n  " + "\n  ".join(exc.problems)
        ) from None
    return text


def public_files(
    row: GatewayRow,
    settings: FleetSettings,
    *,
    source: str,
    ca_pem: bytes,
    cert_serial: str,
    psk: str | None,
    unit: str,
    technician_hash: str | None = None,
) -> Files:
    """Every file of the bundle that follows from its inputs (the identity comes separately)."""
    dev = settings.device
    files: Files = {
        CONFIG: (render_config(row, settings, source, technician_hash).encode(), SECRET),
        CA_CERT: (ca_pem, SECRET),
        f"{PAYLOAD}/install.sh": (boot.template("install.sh").encode(), SCRIPT),
        f"{PAYLOAD}/gateway.env": (boot.gateway_env(row, dev).encode(), PUBLIC),
        f"{PAYLOAD}/wardgate.service": (unit.encode(), PUBLIC),
        "boot/cloud-init/user-data": (boot.user_data(row, dev).encode(), PUBLIC),
        "boot/cloud-init/meta-data": (boot.meta_data(row, dev, cert_serial).encode(), PUBLIC),
        "boot/cloud-init/network-config": (
            boot.network_config(row, dev, psk).encode(),
            SECRET if psk else PUBLIC,
        ),
        "boot/bookworm/custom.toml": (
            boot.custom_toml(row, dev, psk).encode(),
            SECRET if psk else PUBLIC,
        ),
        "boot/bookworm/firstrun.sh": (boot.template("firstrun.sh").encode(), SCRIPT),
        "boot/bookworm/cmdline-append.txt": ((" " + boot.CMDLINE_FIRSTRUN + "\n").encode(), PUBLIC),
        "README.txt": (_readme(row).encode(), PUBLIC),
    }
    connection = boot.nm_connection(row, psk)
    if connection is not None:
        name, text = connection
        files[f"{PAYLOAD}/network/{name}"] = (text.encode(), SECRET)
    return files


def identity_files(identity: Identity) -> Files:
    files: Files = {CERT: (identity.cert_pem, SECRET), KEY: (identity.key_pem, SECRET)}
    if identity.password is not None:
        files[PASSWORD] = ((identity.password + "\n").encode(), SECRET)
    return files


def write_new(directory: Path, files: Files) -> None:
    """Write a fresh bundle folder (staging: nobody else sees it until it is renamed)."""
    for rel, (data, mode) in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    directory.chmod(0o700)


def update(directory: Path, files: Files) -> list[str]:
    """Rewrite changed files of an existing bundle in place; returns what changed."""
    changed = [
        rel for rel, (data, mode) in files.items() if write_file(directory / rel, data, mode)
    ]
    return changed


#: generated by older versions or for an earlier inventory row, and no longer part of a bundle:
#: a static-address keyfile, and hardware.toml (serial sensors before config.toml had [serial])
STALE_CANDIDATES = (f"{PAYLOAD}/network", f"{ETC}/hardware.toml")


def remove_stale(directory: Path, keep: set[str]) -> list[str]:
    """Delete generated files that are no longer part of the bundle."""
    removed = []
    for sub in STALE_CANDIDATES:
        path = directory / sub
        candidates = list(path.iterdir()) if path.is_dir() else ([path] if path.exists() else [])
        for file in candidates:
            rel = file.relative_to(directory).as_posix()
            if rel not in keep:
                file.unlink()
                removed.append(rel)
    return removed


def is_complete(directory: Path, with_password: bool) -> bool:
    needed = (CONFIG, CERT, KEY, CA_CERT) + ((PASSWORD,) if with_password else ())
    return all((directory / rel).is_file() for rel in needed)


def read_identity(directory: Path) -> tuple[bytes, bytes, str | None]:
    key = (directory / KEY).read_bytes()
    cert = (directory / CERT).read_bytes()
    pw_path = directory / PASSWORD
    password = pw_path.read_text().strip() if pw_path.exists() else None
    return key, cert, password


def write_manifest(directory: Path, gateway_id: str, cert_serial: str) -> None:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != MANIFEST:
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    doc = {
        "gateway": gateway_id,
        "certificate_serial": cert_serial,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    write_file(directory / MANIFEST, json.dumps(doc, indent=2) + "\n", PUBLIC)


def make_tarball(directory: Path, target: Path) -> None:
    """`<id>.tar.gz` holding `<id>/...` with the files' modes; written atomically, 0600."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        tar.add(directory, arcname=directory.name, filter=_owner_neutral)
    write_file(target, buf.getvalue(), SECRET)


def _owner_neutral(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


# --- onto a boot partition ------------------------------------------------------------------


def flash(
    directory: Path, boot_dir: Path, *, wheelhouse: Path | None = None, flavour: str = "auto"
) -> str:
    """Put a bundle onto a mounted Raspberry Pi OS boot partition; returns the flavour used.

    The flavour follows the image: fresh cloud-init images carry `meta-data`/`user-data` in the
    partition root; Bookworm images carry neither.
    """
    if not (boot_dir / "cmdline.txt").is_file() or not (boot_dir / "config.txt").is_file():
        raise FleetError(
            f"{boot_dir}: not a Raspberry Pi OS boot partition (no cmdline.txt / config.txt); "
            "mount the card's first (FAT) partition and give its mount point"
        )
    if not (directory / CONFIG).is_file() or not (directory / KEY).is_file():
        raise FleetError(f"{directory}: not a complete bundle (no config or key)")
    if flavour == "auto":
        has_cloud_init = (boot_dir / "meta-data").exists() or (boot_dir / "user-data").exists()
        flavour = "cloud-init" if has_cloud_init else "bookworm"
    wheels = sorted(wheelhouse.glob("*.whl")) if wheelhouse else []
    if wheelhouse is not None and not any(w.name.startswith("wardgate-") for w in wheels):
        raise FleetError(f"{wheelhouse}: no wardgate-*.whl in it (build one: `pip wheel .`)")
    need = sum(w.stat().st_size for w in wheels) + 1_000_000
    if shutil.disk_usage(boot_dir).free < need:
        raise FleetError(f"{boot_dir}: not enough free space ({need // 1_000_000} MB needed)")

    # a conf.d/ in a bundle is never carried to the card: the gateway's own conf.d/ holds the
    # site's overrides and install.sh leaves it alone (docs/config.md, "Layers")
    _copy_tree(directory / PAYLOAD, boot_dir / "wardgate", skip="etc/conf.d")
    if wheels:
        (boot_dir / "wardgate" / "wheels").mkdir(exist_ok=True)
        for wheel in wheels:
            shutil.copyfile(wheel, boot_dir / "wardgate" / "wheels" / wheel.name)
    if flavour == "cloud-init":
        for name in ("user-data", "meta-data", "network-config"):
            shutil.copyfile(directory / "boot/cloud-init" / name, boot_dir / name)
    elif flavour == "bookworm":
        for name in ("custom.toml", "firstrun.sh"):
            shutil.copyfile(directory / "boot/bookworm" / name, boot_dir / name)
        cmdline = boot_dir / "cmdline.txt"
        line = cmdline.read_text().strip()
        if "systemd.run=" not in line:
            cmdline.write_text(line + " " + boot.CMDLINE_FIRSTRUN + "\n")
    else:
        raise FleetError(f"unknown flavour {flavour!r}: use auto, cloud-init or bookworm")
    os.sync()
    return flavour


def _copy_tree(src: Path, dst: Path, skip: str | None = None) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if skip is not None and (rel.as_posix() + "/").startswith(skip + "/"):
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            try:  # FAT ignores modes; elsewhere (tests, staging disks) keep them
                target.chmod(stat.S_IMODE(path.stat().st_mode))
            except OSError:
                pass


def _readme(row: GatewayRow) -> str:
    return f"""\
wardgate bundle for gateway {row.id} ({row.district}/{row.ward}, {row.site_type})
Board serial: {row.hw_serial}. The installer refuses to run on another board.

Easiest: flash Raspberry Pi OS Lite (64-bit) to the card, mount its boot partition, then
    wardgate provision flash FLEET_DIR {row.id} --boot /media/$USER/bootfs --wheelhouse WHEELS

By hand:
  1. Copy boot/wardgate/ to the boot partition (as wardgate/), and your wheels into
     wardgate/wheels/.
  2. Images with cloud-init (meta-data, user-data on the partition): copy the three files of
     boot/cloud-init/ to the partition root, replacing the ones there.
     Bookworm images: copy boot/bookworm/custom.toml and firstrun.sh to the partition root and
     append the line in boot/bookworm/cmdline-append.txt to the end of cmdline.txt (one line).
  3. Boot the gateway. Installation takes a few minutes; afterwards wardgate/INSTALLED appears
     on the boot partition, or wardgate/INSTALL-FAILED.txt with the reason.

Check this bundle: wardgate provision verify FLEET_DIR/bundles/{row.id}
Secrets (tls/gateway.key, mqtt.password) are in boot/wardgate/etc/: keep this folder 0700.
"""
