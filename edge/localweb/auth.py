"""The technician's credential (PBKDF2-HMAC-SHA256, stdlib), sessions and CSRF tokens.

PBKDF2 from hashlib rather than argon2-cffi: no compiled dependency on the Pi, and one login per
visit can afford 600,000 iterations (OWASP 2023; ~0.5 s on a Pi 4). The config holds only the
hash (`pbkdf2_sha256$ITERATIONS$SALT$HASH`, base64)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time

ITERATIONS = 600_000
SESSION_S = 8 * 3600.0
#: failed logins within FAIL_WINDOW_S before every login waits out the window
MAX_FAILS = 5
FAIL_WINDOW_S = 60.0


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"pbkdf2_sha256${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


class Sessions:
    """Session id -> (CSRF token, expiry), in memory: a restart logs the technician out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, float]] = {}
        self._fails: list[float] = []

    def create(self) -> tuple[str, str]:
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            self._sessions[sid] = (csrf, now + SESSION_S)
        return sid, csrf

    def csrf(self, sid: str | None) -> str | None:
        """The session's CSRF token, or None for no (or an expired) session."""
        if not sid:
            return None
        with self._lock:
            entry = self._sessions.get(sid)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def locked_out(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._fails = [t for t in self._fails if now - t < FAIL_WINDOW_S]
            return len(self._fails) >= MAX_FAILS

    def failed(self) -> None:
        with self._lock:
            self._fails.append(time.monotonic())
