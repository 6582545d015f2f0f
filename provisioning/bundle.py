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
from collections.abc import Callable
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
    directory: Path,
    boot_dir: Path,
    *,
    wheelhouse: Path | None = None,
    flavour: str = "auto",
    arch: str = "aarch64",
    allow_uninstallable: bool = False,
    say: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Put a bundle onto a mounted Raspberry Pi OS boot partition; returns the flavour used.

    The flavour follows the image: fresh cloud-init images carry `meta-data`/`user-data` in the
    partition root; Bookworm images carry neither. A card that could not install wardgate (no
    wheelhouse, or one that misses a wheel for the card's OS and CPU) is refused before anything
    is written, unless `allow_uninstallable`. `wardgate/` on the card is replaced as a whole, and
    every file is on the card (fsync, sync) when this returns.
    """
    say = say or log.warning
    if not (boot_dir / "cmdline.txt").is_file() or not (boot_dir / "config.txt").is_file():
        raise FleetError(
            f"{boot_dir}: not a Raspberry Pi OS boot partition (no cmdline.txt / config.txt); "
            "mount the card's first (FAT) partition and give its mount point"
        )
    if not (directory / CONFIG).is_file() or not (directory / KEY).is_file():
        raise FleetError(f"{directory}: not a complete bundle (no config or key)")
    flavour = card_flavour(boot_dir, flavour)
    wheels_from = card_wheelhouse(boot_dir, wheelhouse, flavour, arch, allow_uninstallable, say)
    wheels = sorted(wheels_from.glob("*.whl")) if wheels_from else []
    if wheelhouse is not None and not any(w.name.startswith("wardgate-") for w in wheels):
        raise FleetError(f"{wheelhouse}: no wardgate-*.whl in it (build one: `pip wheel .`)")
    need = sum(w.stat().st_size for w in wheels) + 1_000_000
    free = shutil.disk_usage(boot_dir).free + _tree_size(boot_dir / "wardgate")
    if free < need:
        raise FleetError(f"{boot_dir}: not enough free space ({need // 1_000_000} MB needed)")

    previous = card_gateway(boot_dir)
    gateway = _env_value(directory / PAYLOAD / "gateway.env", "WARDGATE_ID")
    if previous is not None and previous != gateway:
        say(
            f"warning: {boot_dir}: this card held gateway {previous}; its wardgate/ folder "
            "(config, secrets, network settings) is replaced"
        )
    kept = replace_payload(directory, boot_dir, keep_wheels=wheels_from == _card_wheels(boot_dir))
    if wheels and not kept:
        copy_wheels(wheels, boot_dir / "wardgate" / "wheels", progress)
    if flavour == "cloud-init":
        for name in ("user-data", "meta-data", "network-config"):
            shutil.copyfile(directory / "boot/cloud-init" / name, boot_dir / name)
    else:
        for name in ("custom.toml", "firstrun.sh"):
            shutil.copyfile(directory / "boot/bookworm" / name, boot_dir / name)
        cmdline = boot_dir / "cmdline.txt"
        line = cmdline.read_text().strip()
        if "systemd.run=" not in line:
            cmdline.write_text(line + " " + boot.CMDLINE_FIRSTRUN + "\n")
    _fsync_tree(boot_dir)
    os.sync()
    return flavour


# --- flash: the card's OS, its wheelhouse, replacing wardgate/ ---------------------------------

#: the Raspberry Pi OS release behind each first-boot flavour (cloud-init came with Trixie)
FLAVOUR_OS = {"cloud-init": "trixie", "bookworm": "bookworm"}


def card_flavour(boot_dir: Path, flavour: str) -> str:
    if flavour == "auto":
        has_cloud_init = (boot_dir / "meta-data").exists() or (boot_dir / "user-data").exists()
        return "cloud-init" if has_cloud_init else "bookworm"
    if flavour not in FLAVOUR_OS:
        raise FleetError(f"unknown flavour {flavour!r}: use auto, cloud-init or bookworm")
    return flavour


def _card_wheels(boot_dir: Path) -> Path:
    return boot_dir / "wardgate" / "wheels"


def card_wheelhouse(
    boot_dir: Path,
    wheelhouse: Path | None,
    flavour: str,
    arch: str,
    allow_uninstallable: bool,
    say: Callable[[str], None],
) -> Path | None:
    """The wheels the card will carry: `wheelhouse`, or without one the card's own when they are
    complete for its OS and CPU. Refuses (FleetError) a card that could not install wardgate
    offline, unless `allow_uninstallable`."""
    from provisioning import wheelhouse as wh

    tgt = wh.target(FLAVOUR_OS[flavour], arch)
    on_card = _card_wheels(boot_dir)
    if wheelhouse is None and on_card.is_dir() and not wh.check_for_card(on_card, tgt):
        say(f"{boot_dir}: keeping the wheels already on the card (complete for {tgt.name})")
        return on_card
    problems = wh.check_for_card(wheelhouse, tgt)
    if not problems:
        return wheelhouse
    if allow_uninstallable:
        say(
            f"warning: {boot_dir}: this card cannot install wardgate offline ({problems[0]}); "
            "written anyway (--allow-uninstallable): the image must already carry wardgate"
        )
        return wheelhouse
    raise FleetError(
        f"{boot_dir}: not writing a card that cannot install wardgate: the card is "
        f"{tgt.describe} ({flavour} image) and\n  "
        + "\n  ".join(problems[:10])
        + ("\n  ..." if len(problems) > 10 else "")
        + f"\nBuild the wheels: wardgate provision wheelhouse --os {tgt.os} --arch {tgt.arch} "
        f"(then --wheelhouse wheels/{tgt.name}); --allow-uninstallable writes the card anyway "
        "(for images that already carry wardgate)"
    )


def card_gateway(boot_dir: Path) -> str | None:
    """The gateway id a card's `wardgate/` was written for, if any."""
    return _env_value(boot_dir / "wardgate" / "gateway.env", "WARDGATE_ID")


def _env_value(path: Path, key: str) -> str | None:
    import shlex

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + "="):
            values = shlex.split(line.split("=", 1)[1])
            return values[0] if values else ""
    return None


def replace_payload(directory: Path, boot_dir: Path, *, keep_wheels: bool) -> bool:
    """Replace the card's `wardgate/` with the bundle's: nothing of a previous gateway stays (its
    network keyfiles, secrets, INSTALLED marker). Keeps the card's wheels only when told to;
    returns whether it did."""
    target = boot_dir / "wardgate"
    kept = boot_dir / ".wardgate-wheels"
    shutil.rmtree(kept, ignore_errors=True)
    if keep_wheels:
        (target / "wheels").rename(kept)
    shutil.rmtree(target, ignore_errors=True)
    # a conf.d/ in a bundle is never carried to the card: the gateway's own conf.d/ holds the
    # site's overrides and install.sh leaves it alone (docs/config.md, "Layers")
    _copy_tree(directory / PAYLOAD, target, skip="etc/conf.d")
    if keep_wheels:
        kept.rename(target / "wheels")
    return keep_wheels


def copy_wheels(
    wheels: list[Path], dest: Path, progress: Callable[[int, int], None] | None = None
) -> None:
    """Copy the wheels in 1 MiB steps, reporting (bytes done, bytes total) as it goes."""
    dest.mkdir(parents=True, exist_ok=True)
    total = sum(w.stat().st_size for w in wheels)
    done = 0
    for wheel in wheels:
        with open(wheel, "rb") as src, open(dest / wheel.name, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            dst.flush()
            os.fsync(dst.fileno())


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _fsync_tree(boot_dir: Path) -> None:
    """fsync what flash wrote (wardgate/ and the first-boot files) and their folders: a card
    pulled after "safe to eject" holds every byte."""
    files = [p for p in (boot_dir / "wardgate").rglob("*") if p.is_file()]
    files += [boot_dir / n for n in FIRST_BOOT_FILES if (boot_dir / n).is_file()]
    folders = [boot_dir, boot_dir / "wardgate"]
    folders += [p for p in (boot_dir / "wardgate").rglob("*") if p.is_dir()]
    for path in files + folders:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path in folders else 0))
        try:
            os.fsync(fd)
        except OSError:  # some file systems refuse fsync on a folder
            if path not in folders:
                raise
        finally:
            os.close(fd)


FIRST_BOOT_FILES = (
    "user-data", "meta-data", "network-config", "custom.toml", "firstrun.sh", "cmdline.txt",
)  # fmt: skip


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
    wardgate provision wheelhouse --os bookworm --arch aarch64  (once; cloud-init images: trixie)
    wardgate provision flash FLEET_DIR {row.id} --boot /media/$USER/bootfs \\
        --wheelhouse wheels/bookworm-aarch64

By hand:
  1. Copy boot/wardgate/ to the boot partition as wardgate/ (delete any wardgate/ folder there
     first), and the wheels for the card's OS and CPU into wardgate/wheels/.
  2. Images with cloud-init (meta-data, user-data on the partition): copy the three files of
     boot/cloud-init/ to the partition root, replacing the ones there.
     Bookworm images: copy boot/bookworm/custom.toml and firstrun.sh to the partition root and
     append the line in boot/bookworm/cmdline-append.txt to the end of cmdline.txt (one line).
  3. Boot the gateway. Installation takes a few minutes; afterwards wardgate/INSTALLED appears
     on the boot partition, or wardgate/INSTALL-FAILED.txt with the reason.

Check this bundle: wardgate provision verify FLEET_DIR/bundles/{row.id}
Secrets (tls/gateway.key, mqtt.password) are in boot/wardgate/etc/: keep this folder 0700.
"""
