"""Mosquitto password hashes, byte-for-byte in the format `mosquitto_passwd` writes.

`user:$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512 digest>` with a 12-byte salt and a
64-byte digest (mosquitto 2.0 `-H sha512-pbkdf2`, its default). The iteration count is ours to
choose: see DEFAULT_ITERATIONS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

SALT_BYTES = 12
DIGEST_BYTES = 64

DEFAULT_ITERATIONS = 101
"""mosquitto_passwd's own default. Every password we hash is 256 random bits that no person
chooses or types, so offline guessing is hopeless at any iteration count; stretching would only
buy a slower broker. Mosquitto is single-threaded and hashes on every password CONNECT: at
OWASP's 210,000 iterations one hash took 110-180 ms here (101: 0.1 ms), so 1,000 gateways
reconnecting after a broker restart would stall the broker for 2-3 minutes, and enrolling them
would take as long (bench/provision.py measures both). For accounts whose passwords a person
chooses, raise `accounts.password_iterations` in fleet.toml (e.g. 210000)."""

MAX_ITERATIONS = 10_000_000


def new_password() -> str:
    """256 random bits, URL-safe, no characters that need quoting in a shell or a file."""
    return secrets.token_urlsafe(32)


def hash_password(
    password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """The `$7$...` hash mosquitto_passwd would store for this password."""
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1..{MAX_ITERATIONS}, got {iterations}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, hashed: str) -> bool:
    """True if `password` matches a `$7$` (PBKDF2) or `$6$` (salted SHA-512) mosquitto hash."""
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, digest = int(parts[2]), _unb64(parts[3]), _unb64(parts[4])
            given = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
            return hmac.compare_digest(given, digest)
        if len(parts) == 4 and parts[1] == "6":
            salt, digest = _unb64(parts[2]), _unb64(parts[3])
            given = hashlib.sha512(password.encode("utf-8") + salt).digest()
            return hmac.compare_digest(given, digest)
    except ValueError:
        return False
    return False


def render_file(entries: Iterable[tuple[str, str]]) -> str:
    """A password file from (username, hash) pairs, sorted so that reruns give the same bytes."""
    lines = []
    for user, hashed in sorted(entries):
        if ":" in user or "\n" in user or not user:
            raise ValueError(f"username {user!r} cannot go in a mosquitto password file")
        lines.append(f"{user}:{hashed}\n")
    return "".join(lines)


def parse_file(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            user, _, hashed = line.partition(":")
            out[user] = hashed
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
