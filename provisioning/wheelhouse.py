"""Offline installs: the wheels a gateway's card carries, for its OS and CPU (docs/provisioning.md).

A gateway installs `wardgate[gateway]` with `pip install --no-index` from `wardgate/wheels/` on its
boot partition. The wheels are downloaded here, on the workstation, for another machine: pip then
needs the *whole* list of platform tags the Pi's pip accepts. Given only `manylinux2014_aarch64`,
pip silently picks older numpy and cbor2 and finds no `ai-edge-litert` at all (its aarch64 wheels
are `manylinux_2_27`); the full list for the target's glibc gets what `pip install` on the Pi
itself would get. Packages that ship only an sdist (`sdnotify`) are built here when they are pure
Python (a `py3-none-any` wheel installs anywhere) and refused otherwise.

`check()` is the test both `wheelhouse` and `flash` apply: every requirement of
`wardgate[gateway]`, followed through every wheel's metadata with the target's markers, has a
wheel the target's pip accepts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging import tags as pkg_tags
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from provisioning.fleet import FleetError

MANIFEST = "wheelhouse.json"
ROLE = "gateway"  # the extra a gateway installs (install.sh: 'wardgate[gateway]')
OLDEST_MANYLINUX = 17  # manylinux_2_17 == manylinux2014, the oldest tag aarch64/armv7l wheels use


class WheelhouseError(FleetError):
    """A wheelhouse that cannot be built or would not install."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A Raspberry Pi OS release on one CPU: what its pip accepts."""

    os: str
    arch: str
    python: str  # full version of the release's python3, for markers and Requires-Python
    glibc: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.os}-{self.arch}"

    @property
    def python_short(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def describe(self) -> str:
        glibc = ".".join(map(str, self.glibc))
        return f"{self.os}/{self.arch} (Python {self.python_short}, glibc {glibc})"

    def platforms(self) -> list[str]:
        """Newest first, as pip on the target ranks them: manylinux_2_N down to 2_17, the
        manylinux2014 alias, then the plain linux_ tag (piwheels' armv7l wheels carry it)."""
        major, minor = self.glibc
        newest_first = range(minor, OLDEST_MANYLINUX - 1, -1)
        tags = [f"manylinux_{major}_{m}_{self.arch}" for m in newest_first]
        return [*tags, f"manylinux2014_{self.arch}", f"linux_{self.arch}"]

    def tags(self) -> set[pkg_tags.Tag]:
        version = tuple(int(p) for p in self.python.split(".")[:2])
        interpreter = f"cp{version[0]}{version[1]}"
        platforms = self.platforms()
        found = set(pkg_tags.cpython_tags(version, abis=[interpreter], platforms=platforms))
        found |= set(pkg_tags.compatible_tags(version, interpreter, platforms))
        return found

    def environment(self, extra: str = "") -> dict[str, str]:
        """PEP 508 marker values on the target (not on this machine)."""
        return {
            "python_version": self.python_short,
            "python_full_version": self.python,
            "implementation_name": "cpython",
            "implementation_version": self.python,
            "platform_python_implementation": "CPython",
            "platform_machine": self.arch,
            "platform_system": "Linux",
            "sys_platform": "linux",
            "os_name": "posix",
            "platform_release": "",
            "platform_version": "",
            "extra": extra,
        }


#: Raspberry Pi OS releases: Debian's python3 and glibc (libc6) in each
TARGETS: dict[tuple[str, str], Target] = {
    (os_name, arch): Target(os_name, arch, python, glibc)
    for os_name, python, glibc in (("bookworm", "3.11.2", (2, 36)), ("trixie", "3.13.5", (2, 41)))
    for arch in ("aarch64", "armv7l")
}
OSES = ("bookworm", "trixie")
ARCHES = ("aarch64", "armv7l")


def target(os_name: str, arch: str) -> Target:
    try:
        return TARGETS[(os_name, arch)]
    except KeyError:
        raise WheelhouseError(
            f"no target {os_name}/{arch}: --os is one of {', '.join(OSES)}, "
            f"--arch one of {', '.join(ARCHES)}"
        ) from None


# --- checking --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # canonical
    version: Version
    metadata: email.message.Message

    def requires(self, extras: Iterable[str], tgt: Target) -> list[Requirement]:
        out = []
        for line in self.metadata.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is None or any(
                req.marker.evaluate(tgt.environment(e)) for e in ("", *extras)
            ):
                out.append(req)
        return out

    def python_ok(self, tgt: Target) -> bool:
        spec = self.metadata.get("Requires-Python")
        return not spec or Version(tgt.python) in SpecifierSet(spec)


def _read_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as whl:
        name = next(
            n for n in whl.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        )
        return email.parser.HeaderParser().parsestr(whl.read(name).decode("utf-8"))


def usable_wheels(directory: Path, tgt: Target) -> tuple[dict[str, list[Wheel]], list[str]]:
    """The wheels in `directory` that the target's pip accepts, by name; and what is wrong with
    the others (unreadable files, wheels for another platform)."""
    accepted = tgt.tags()
    wheels: dict[str, list[Wheel]] = {}
    problems = []
    for path in sorted(directory.glob("*.whl")):
        try:
            name, version, _build, wheel_tags = parse_wheel_filename(path.name)
            if not wheel_tags & accepted:
                problems.append(f"{path.name}: not for {tgt.describe}")
                continue
            wheel = Wheel(path, name, version, _read_metadata(path))
        except (ValueError, StopIteration, zipfile.BadZipFile, OSError) as exc:
            problems.append(f"{path.name}: not a readable wheel ({exc or type(exc).__name__})")
            continue
        if wheel.python_ok(tgt):
            wheels.setdefault(name, []).append(wheel)
    for found in wheels.values():
        found.sort(key=lambda w: w.version, reverse=True)
    return wheels, problems


def check(directory: Path, tgt: Target, requirement: str = f"wardgate[{ROLE}]") -> list[str]:
    """What `pip install --no-index --find-links DIR wardgate[gateway]` on the target would miss:
    an empty list when the wheelhouse is complete. Follows every wheel's dependencies with the
    target's markers, taking the newest wheel that fits (as pip does)."""
    if not directory.is_dir():
        return [f"{directory}: no such folder"]
    wheels, _ = usable_wheels(directory, tgt)
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[Requirement, str]] = [(Requirement(requirement), "the gateway")]
    while todo:
        req, needed_by = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, ",".join(sorted(req.extras)) + str(req.specifier))
        if key in seen:
            continue
        seen.add(key)
        fits = [w for w in wheels.get(name, []) if req.specifier.contains(w.version, True)]
        if not fits:
            have = ", ".join(str(w.version) for w in wheels.get(name, [])) or "none"
            problems.append(
                f"{req} (needed by {needed_by}): no wheel for {tgt.describe} (have: {have})"
            )
            continue
        best = fits[0]
        todo.extend((dep, f"{best.name} {best.version}") for dep in best.requires(req.extras, tgt))
    return sorted(problems)


def read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def check_for_card(directory: Path | None, tgt: Target) -> list[str]:
    """Why a card with this wheelhouse would not install on `tgt` (empty: it would)."""
    if directory is None:
        return ["no wheelhouse given (--wheelhouse DIR)"]
    manifest = read_manifest(directory)
    if manifest is not None:
        built = manifest.get("target", {})
        if (built.get("os"), built.get("arch")) != (tgt.os, tgt.arch):
            return [
                f"{directory} was built for {built.get('os')}/{built.get('arch')}, "
                f"the card is {tgt.os}/{tgt.arch}"
            ]
    return check(directory, tgt)


# --- building --------------------------------------------------------------------------------


def project_root() -> Path | None:
    """The source tree this wardgate runs from, if it runs from one (a checkout, an editable
    install): where `pip wheel` builds wardgate's own wheel."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "setup.cfg").is_file() and (root / "pyproject.toml").is_file() else None


def target_pins(constraints: Path, tgt: Target) -> list[str]:
    """constraints.txt's pins whose markers hold on the target, markers removed (pip would judge
    them on this machine instead)."""
    pins = []
    for lineno, raw in enumerate(constraints.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise WheelhouseError(f"{constraints}:{lineno}: not a requirement ({exc})") from None
        if req.marker is None or req.marker.evaluate(tgt.environment()):
            pins.append(f"{req.name}{req.specifier}")
    return pins


#: what a copy of the source tree leaves out before building wardgate's wheel
NOT_SOURCE = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
NO_DIST = re.compile(r"No matching distribution found for (\S+)")


@dataclasses.dataclass
class Built:
    directory: Path
    wheels: int
    bytes: int
    from_sdist: list[str]
    pins: list[str]


def build(
    tgt: Target,
    out: Path,
    *,
    source: Path | None = None,
    wardgate_wheel: Path | None = None,
    constraints: Path | None = None,
    pip_args: Iterable[str] = (),
    python: str = sys.executable,
    say: Callable[[str], None] = print,
) -> Built:
    """Download (and where needed build) every wheel `wardgate[gateway]` needs on `tgt` into `out`,
    replacing what was there only once the new set is complete."""
    if out.exists() and any(
        p.name != MANIFEST and p.suffix != ".whl" for p in out.iterdir()
    ):  # never delete a folder that is not a wheelhouse
        raise WheelhouseError(f"{out}: exists and holds more than wheels; give another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        result = _build_into(
            tgt, staging, source, wardgate_wheel, constraints, list(pip_args), python, say
        )
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        result.directory = out
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pip(python: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run(
        [python, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False
    )


def _tail(proc: subprocess.CompletedProcess, lines: int = 15) -> str:
    return "\n  ".join((proc.stdout + proc.stderr).strip().splitlines()[-lines:])


def _build_into(
    tgt: Target,
    staging: Path,
    source: Path | None,
    wardgate_wheel: Path | None,
    constraints: Path | None,
    pip_args: list[str],
    python: str,
    say: Callable[[str], None],
) -> Built:
    # wardgate itself: pure Python, built from the source tree (or given)
    if wardgate_wheel is not None:
        if not wardgate_wheel.name.startswith("wardgate-") or not wardgate_wheel.is_file():
            raise WheelhouseError(f"{wardgate_wheel}: not a wardgate-*.whl")
        shutil.copyfile(wardgate_wheel, staging / wardgate_wheel.name)
    else:
        source = source or project_root()
        if source is None:
            raise WheelhouseError(
                "wardgate is not running from a source tree: give --source DIR (a checkout) "
                "or --wardgate-wheel FILE"
            )
        say(f"building wardgate's wheel from {source}")
        # from a clean copy: setuptools' in-tree build/ keeps files deleted from the source
        # and would ship them
        tree = staging.parent / f"{staging.name}.src"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns(*NOT_SOURCE))
        try:
            proc = _pip(python, "wheel", "--no-deps", "-q", "-w", str(staging), str(tree))
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        if proc.returncode != 0:
            raise WheelhouseError(f"pip wheel {source} failed:\n  {_tail(proc)}")
    (own,) = staging.glob("wardgate-*.whl")

    pins = []
    if constraints is None and source is not None and (source / "constraints.txt").is_file():
        constraints = source / "constraints.txt"
    if constraints is not None:
        pins = target_pins(constraints, tgt)
    pin_file = staging.parent / f"{staging.name}.constraints.txt"
    pin_file.write_text("".join(p + "\n" for p in pins))
    say(
        f"resolving wardgate[{ROLE}] for {tgt.describe}: "
        + (
            f"{len(pins)} pins from {constraints}"
            if pins
            else "no pin holds there: newest that fit"
        )
    )
    platform_args = [a for p in tgt.platforms() for a in ("--platform", p)]
    abi = "cp" + tgt.python_short.replace(".", "")
    from_sdist: list[str] = []
    try:
        for _attempt in range(10):
            proc = _pip(
                python, "download", "-d", str(staging), "--find-links", str(staging),
                "--only-binary=:all:", *platform_args, "--python-version", tgt.python_short,
                "--implementation", "cp", "--abi", abi, "-c", str(pin_file), *pip_args,
                f"{own}[{ROLE}]",
            )  # fmt: skip
            if proc.returncode == 0:
                break
            missing = NO_DIST.search(proc.stdout + proc.stderr)
            if missing is None or missing.group(1) in from_sdist:
                raise WheelhouseError(f"pip download for {tgt.describe} failed:\n  {_tail(proc)}")
            from_sdist.append(_build_pure(missing.group(1), staging, pin_file, pip_args, python))
            say(f"{missing.group(1)}: no wheel on the index; built {from_sdist[-1]} from its sdist")
        else:
            raise WheelhouseError("pip download kept failing; giving up after 10 attempts")
    finally:
        pin_file.unlink(missing_ok=True)

    problems = check(staging, tgt)
    if problems:
        raise WheelhouseError(
            f"the wheels for {tgt.describe} are incomplete:\n  " + "\n  ".join(problems)
        )
    wheels = sorted(staging.glob("*.whl"))
    manifest = {
        "target": {
            "os": tgt.os,
            "arch": tgt.arch,
            "python": tgt.python_short,
            "glibc": ".".join(map(str, tgt.glibc)),
        },
        "requirement": f"wardgate[{ROLE}]",
        "platforms": tgt.platforms(),
        "pins": pins,
        "built_from_sdist": from_sdist,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wheels": {
            w.name: {"size": w.stat().st_size, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
            for w in wheels
        },
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Built(staging, len(wheels), sum(w.stat().st_size for w in wheels), from_sdist, pins)


def _build_pure(
    requirement: str, staging: Path, pin_file: Path, pip_args: list[str], python: str
) -> str:
    """Build an sdist-only requirement here; only a pure-Python result is any use to the Pi."""
    scratch = Path(tempfile.mkdtemp(prefix="sdist-", dir=staging.parent))
    try:
        proc = _pip(
            python, "wheel", "--no-deps", "--no-binary", ":all:", "-q", "-w", str(scratch),
            "-c", str(pin_file), *pip_args, requirement,
        )  # fmt: skip
        if proc.returncode != 0:
            raise WheelhouseError(
                f"{requirement}: no wheel for the target and no buildable sdist:\n  {_tail(proc)}"
            )
        (wheel,) = scratch.glob("*.whl")
        _, _, _, wheel_tags = parse_wheel_filename(wheel.name)
        if any(t.abi != "none" or t.platform != "any" for t in wheel_tags):
            raise WheelhouseError(
                f"{requirement}: the index has no wheel for the target and its sdist is not pure "
                f"Python ({wheel.name}): build it on a Pi of that OS (`pip wheel "
                f"'{requirement}'`), or give an index that has it (--extra-index-url, e.g. "
                "https://www.piwheels.org/simple for armv7l)"
            )
        shutil.move(wheel, staging / wheel.name)
        return wheel.name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
