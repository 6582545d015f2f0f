"""The offline install, proved on arm64: a Bookworm arm64 root file system under qemu-user installs
wardgate from a card written by `provision flash`, with no network at all, and runs it.

    sudo .venv/bin/python bench/arm64_offline.py [--os bookworm|trixie] [--rootfs DIR]
        [--wheelhouse DIR] [--run-s 40]

Too slow for the suite (debootstrap under emulation takes minutes the first time; the rootfs is
kept and reused). Needs root, debootstrap, qemu-user-static and binfmt-support (Debian packages;
the qemu-aarch64 binfmt entry enabled) and mosquitto. Steps, each timed:

1. a minimal arm64 root file system of the release (`debootstrap --arch=arm64 --variant=minbase`,
   with python3 and python3-venv, as Raspberry Pi OS Lite has them);
2. `provision wheelhouse --os OS --arch aarch64`;
3. a fleet with one gateway (a file camera), `provision flash` onto the rootfs' /boot/firmware
   (shaped as that release's image: Trixie's carries cloud-init's meta-data and user-data);
4. the card's own `wardgate/install.sh`, in the rootfs, in a network namespace with no network
   (`unshare -n`): pip gets nothing but the card's wheels. Only systemctl is a stub (no systemd in
   a chroot); /proc/cpuinfo is an arm-shaped one, bind-mounted, since LiteRT's CPU detection
   reads it and qemu-user passes the host's through (a real Pi needs none of this);
5. `wardgate check-config`, `wardgate detect` on a photo (compared with this machine's result);
6. with the network this time, what `pip install wardgate[gateway]` on the arm64 Python would
   resolve online (`--dry-run --report`), compared with the wheelhouse: the same versions?
7. `wardgate run` as the service user against the fleet's own broker (a real Mosquitto on this
   machine, the fleet's certificates, ACL and CRL) for --run-s seconds: connected, and what it
   published.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(REPO))

from bench.common import machine_summary, print_table  # noqa: E402
from devtools.devbroker import start_local_broker  # noqa: E402
from provisioning import pki, wheelhouse  # noqa: E402
from provisioning.enroll import Enroller  # noqa: E402
from provisioning.fleet import FLEET_TOML_TEMPLATE, FleetDir, write_file  # noqa: E402
from provisioning.inventory import load  # noqa: E402

PASSPHRASE = b"bench passphrase, not a secret"
GATEWAY = "gw-arm64"
HW_SERIAL = "10000000feedc0de"
PHOTO = REPO / "tests/data/photos/astronaut.jpg"
CLIP = REPO / "tests/data/vtest_people.mp4"
MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"  # looked up here: the runs' PATH is the Pi's

#: a Raspberry Pi 5's /proc/cpuinfo (4 x Cortex-A76), with the board serial install.sh checks
CPUINFO = (
    "".join(
        f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 "
        "sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\n"
        "CPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
        for n in range(4)
    )
    + f"Revision\t: d04170\nSerial\t\t: {HW_SERIAL}\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
)

SYSTEMCTL_STUB = """#!/bin/sh
# no systemd in a chroot: record what install.sh asked for
echo "systemctl $*" >> /var/log/systemctl-stub.log
"""


def sh(*cmd: str, timeout: float | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)


def timed(fn):
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def preflight() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (debootstrap, chroot, mounts)")
    for tool in ("debootstrap", "unshare", "chroot", "mosquitto"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            problems.append(
                f"no {tool}: apt-get install debootstrap qemu-user-static binfmt-support"
            )
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not entry.exists() or "enabled" not in entry.read_text():
        problems.append(
            "qemu-aarch64 is not a registered binfmt: `mount -t binfmt_misc binfmt_misc "
            "/proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64`"
        )
    return problems


def make_rootfs(rootfs: Path, tgt: wheelhouse.Target) -> str:
    venv = rootfs / f"usr/lib/python{tgt.python_short}/venv"
    if (rootfs / "usr/bin/python3").exists() and venv.is_dir():
        return "reused"
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    out = sh(
        "debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv",
        tgt.os, str(rootfs), MIRROR,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"debootstrap failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return "debootstrap"


def make_fleet(root: Path, camera: Path) -> FleetDir:
    fleet = FleetDir(root)
    pki.save_ca(pki.create_ca("arm64 proof CA", 30), fleet.ca_dir, PASSPHRASE)
    text = FLEET_TOML_TEMPLATE.format(host="localhost", ca_name="arm64 proof CA")
    write_file(fleet.settings_path, text.replace("alt_names = []", 'alt_names = ["127.0.0.1"]'))
    inventory = root / "inventory.csv"
    inventory.write_text(
        "id,district,ward,site_type,hw_serial,cameras,sensors,network\n"
        f"{GATEWAY},d01,w1,fire_point,{HW_SERIAL},gate={camera},,dhcp\n"
    )
    Enroller(fleet, lambda: PASSPHRASE).run(load(inventory))
    return fleet


class Chroot:
    """/proc (with the arm-shaped cpuinfo over it) and /dev in the rootfs while in use.

    Not /sys: with this x86 machine's /sys/devices/system/cpu, LiteRT's XNNPACK picks kernels
    that compute garbage under qemu (the photo's person, 0.73 without /sys, is not found at all;
    tried). Without /sys it logs "Error in cpuinfo: failed to parse ..." and computes right.
    """

    def __init__(self, rootfs: Path, work: Path):
        self.rootfs, self.work = rootfs, work
        self.mounted: list[Path] = []

    def __enter__(self) -> Chroot:
        cpuinfo = self.work / "cpuinfo"
        cpuinfo.write_text(CPUINFO)
        for target, args in (
            (self.rootfs / "proc", ["-t", "proc", "proc"]),
            (self.rootfs / "proc/cpuinfo", ["--bind", str(cpuinfo)]),
            (self.rootfs / "dev", ["--bind", "/dev"]),
        ):
            out = sh("mount", *args, str(target))
            if out.returncode != 0:
                self.__exit__()
                raise SystemExit(f"mount {target}: {out.stderr}")
            self.mounted.append(target)
        return self

    def __exit__(self, *exc: object) -> None:
        for target in reversed(self.mounted):
            sh("umount", "-l", str(target))
        self.mounted.clear()

    def run(self, *cmd: str, net: bool = True, user: str | None = None, timeout: float = 1800):
        prefix = [] if net else ["unshare", "-n"]
        userspec = [f"--userspec={user}:{user}"] if user else []
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/root", "LANG": "C.UTF-8"}  # fmt: skip
        return subprocess.run(
            [*prefix, CHROOT, *userspec, str(self.rootfs), *cmd],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip


def prepare(rootfs: Path, tgt: wheelhouse.Target) -> None:
    """A clean gateway state (a rerun starts from a fresh image's) plus what a chroot lacks."""
    for path in ("opt/wardgate", "etc/wardgate", "var/lib/wardgate", "boot/firmware"):
        shutil.rmtree(rootfs / path, ignore_errors=True)
    for path in ("var/log/wardgate-install.log", "var/log/systemctl-stub.log"):
        (rootfs / path).unlink(missing_ok=True)
    boot = rootfs / "boot/firmware"
    boot.mkdir(parents=True)
    (boot / "config.txt").write_text("arm_64bit=1\n")
    (boot / "cmdline.txt").write_text("console=tty1 root=PARTUUID=1234-02 rootwait\n")
    if tgt.os == "trixie":  # Raspberry Pi OS images since Trixie configure with cloud-init
        (boot / "meta-data").write_text("instance-id: rpios-image\n")
        (boot / "user-data").write_text("#cloud-config\n")
    stub = rootfs / "usr/local/sbin/systemctl"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(SYSTEMCTL_STUB)
    stub.chmod(0o755)
    (rootfs / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    proof = rootfs / "opt/proof"
    proof.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PHOTO, proof / PHOTO.name)
    shutil.copyfile(CLIP, proof / CLIP.name)


def detections(stdout: str) -> list[tuple[str, float]]:
    found = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            for det in json.loads(line).get("detections", []):
                found.append((det["label"], round(det["score"], 2)))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--os", choices=("bookworm", "trixie"), default="bookworm", dest="os_name")
    ap.add_argument("--rootfs", type=Path, help="default /var/tmp/wardgate-arm64/OS (kept)")
    ap.add_argument("--wheelhouse", type=Path, help="use these wheels instead of building them")
    ap.add_argument("--run-s", type=float, default=40.0, help="how long `wardgate run` runs")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument(
        "--no-online-check", action="store_true", help="skip the online resolution (step 6)"
    )
    args = ap.parse_args()
    problems = preflight()
    if problems:
        print("cannot run:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    print(f"machine: {machine_summary()}")
    rows: list[list[str]] = []
    results: dict[str, object] = {}

    def step(name: str, seconds: float, what: str) -> None:
        print(f"{name}: {seconds:.1f} s, {what}", flush=True)
        rows.append([name, f"{seconds:.1f}", what])
        results[name] = {"seconds": round(seconds, 1), "result": what}

    work = Path(tempfile.mkdtemp(prefix="arm64-proof-", dir="/var/tmp"))
    tgt = wheelhouse.target(args.os_name, "aarch64")
    rootfs = args.rootfs or Path("/var/tmp/wardgate-arm64") / tgt.os
    seconds, how = timed(lambda: make_rootfs(rootfs, tgt))
    step(f"root file system ({tgt.os} arm64)", seconds, how)

    if args.wheelhouse:
        wheels = args.wheelhouse
        seconds, problems = timed(lambda: wheelhouse.check(wheels, tgt))
        if problems:
            raise SystemExit(f"{wheels}: incomplete for {tgt.describe}: {problems}")
        count = len(list(wheels.glob("*.whl")))
        size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    else:
        wheels = work / "wheels"
        seconds, built = timed(lambda: wheelhouse.build(tgt, wheels, say=lambda _m: None))
        count, size = built.wheels, built.bytes
    step("wheelhouse", seconds, f"{count} wheels, {size / 1e6:.1f} MB")

    prepare(rootfs, tgt)
    fleet = make_fleet(work / "fleet", Path("/opt/proof") / CLIP.name)
    from edge.cli import main as wardgate

    boot = rootfs / "boot/firmware"
    argv = ["provision", "flash", str(fleet.root), GATEWAY, "--boot", str(boot)]
    seconds, rc = timed(lambda: wardgate([*argv, "--wheelhouse", str(wheels)]))
    if rc != 0:
        raise SystemExit("flash failed")
    step("flash", seconds, "written, safe to eject")

    with Chroot(rootfs, work) as chroot:
        seconds, out = timed(
            lambda: chroot.run("/bin/bash", "/boot/firmware/wardgate/install.sh", net=False)
        )
        installed = (boot / "wardgate/INSTALLED").exists()
        if out.returncode != 0 or not installed:
            print(out.stdout[-4000:], out.stderr[-4000:], file=sys.stderr)
            failed = boot / "wardgate/INSTALL-FAILED.txt"
            if failed.exists():
                print(failed.read_text(), file=sys.stderr)
            step("offline install (install.sh, no network)", seconds, f"FAILED rc={out.returncode}")
            return 1
        pip_list = chroot.run("/opt/wardgate/venv/bin/pip", "list", "--format=json")
        versions = {p["name"].lower(): p["version"] for p in json.loads(pip_list.stdout)}
        secrets_gone = not (boot / "wardgate/etc").exists()
        step(
            "offline install (install.sh, no network)",
            seconds,
            f"ok, {len(versions)} packages (numpy {versions.get('numpy')}, ai-edge-litert "
            f"{versions.get('ai-edge-litert')}); secrets removed from the card: {secrets_gone}",
        )
        results["installed"] = versions
        results["systemctl"] = (rootfs / "var/log/systemctl-stub.log").read_text().splitlines()

        wg = "/opt/wardgate/venv/bin/wardgate"
        seconds, out = timed(lambda: chroot.run(wg, "check-config", "/etc/wardgate/config.toml"))
        step("check-config", seconds, "ok" if out.returncode == 0 else f"FAILED: {out.stderr}")

        photo = f"/opt/proof/{PHOTO.name}"
        seconds, out = timed(lambda: chroot.run(wg, "detect", "--json", photo))
        arm = detections(out.stdout) if out.returncode == 0 else None
        host = subprocess.run(
            [sys.executable, "-m", "edge.cli", "detect", "--json", str(PHOTO)],
            capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip
        x86 = detections(host.stdout)
        what = (
            f"{arm} (this x86_64 machine: {x86})"
            if arm is not None
            else f"FAILED rc={out.returncode}: {out.stderr[-1500:]}"
        )
        step(f"detect {PHOTO.name}", seconds, what)

        if not args.no_online_check:
            seconds, what = timed(lambda: online_resolution(chroot, wheels))
            step("online resolution on arm64 pip (dry run)", seconds, what)

        broker = start_local_broker(fleet, work / "broker")
        try:
            dropin = rootfs / "etc/wardgate/conf.d/90-arm64-proof.toml"
            dropin.write_text(f"[uplink]\nport = {broker.cert_port}\n")
            sh(CHROOT, str(rootfs), "chown", "wardgate:wardgate", str(dropin)[len(str(rootfs)) :])
            seconds, summary = timed(lambda: run_gateway(chroot, broker, args.run_s))
            step(f"run ({args.run_s:.0f} s) against the fleet's broker", seconds, summary)
        finally:
            broker.stop()

    print()
    print_table(["step", "seconds", "result"], rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def online_resolution(chroot: Chroot, wheels: Path) -> str:
    """What pip on the arm64 Python itself picks from the index, against the wheelhouse."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    own = chroot.rootfs / "opt/proof/own"
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir(parents=True)
    for wheel in wheels.glob("wardgate-*.whl"):
        shutil.copyfile(wheel, own / wheel.name)
    shutil.copyfile("/etc/resolv.conf", chroot.rootfs / "etc/resolv.conf")
    # this machine's CA bundle: it may hold a proxy's CA that the fresh rootfs lacks
    shutil.copyfile(CA_BUNDLE, chroot.rootfs / "opt/proof/ca-certificates.crt")
    out = chroot.run(
        "/opt/wardgate/venv/bin/pip", "install", "--cert", "/opt/proof/ca-certificates.crt",
        "--dry-run", "--ignore-installed", "--quiet",
        "--report", "/opt/proof/report.json", "--find-links", "/opt/proof/own",
        "wardgate[gateway]",
    )  # fmt: skip
    if out.returncode != 0:
        return f"FAILED: {(out.stdout + out.stderr)[-1500:]}"
    report = json.loads((chroot.rootfs / "opt/proof/report.json").read_text())
    online = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report["install"]
    }
    offline = {}
    for wheel in wheels.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        offline[name] = str(version)
    differ = {
        name: (online.get(name), offline.get(name))
        for name in sorted(set(online) | set(offline))
        if online.get(name) != offline.get(name)
    }
    verdict = "the same" if not differ else f"DIFFERENT (online, wheelhouse): {differ}"
    return f"{len(online)} distributions online, {len(offline)} wheels: {verdict}"


def run_gateway(chroot: Chroot, broker, run_s: float) -> str:
    log = chroot.work / "run.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [CHROOT, "--userspec=wardgate:wardgate", str(chroot.rootfs),
             "/opt/wardgate/venv/bin/wardgate", "run", "--config", "/etc/wardgate/config.toml"],
            stdout=handle, stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/var/lib/wardgate"},
        )  # fmt: skip
        start = time.monotonic()
        connected_after = None
        while time.monotonic() - start < run_s and proc.poll() is None:
            if connected_after is None and f"as {GATEWAY}" in broker.log():
                connected_after = time.monotonic() - start
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    text = log.read_text()
    errors = [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]
    print(text[-3000:])
    connected = f"connected after {connected_after:.1f} s" if connected_after else "NOT connected"
    published: dict[str, int] = {}
    for match in re.finditer(rf"Received PUBLISH from {GATEWAY} \(.*?'([^']+)'", broker.log()):
        kind = match.group(1).split(f"/{GATEWAY}/", 1)[-1]
        published[kind] = published.get(kind, 0) + 1
    return (
        f"{connected}; published {published}; exit {rc} on SIGTERM; "
        f"{len(errors)} error lines in its log"
    )


if __name__ == "__main__":
    sys.exit(main())
