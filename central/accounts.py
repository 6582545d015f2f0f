"""Per-person console accounts: argon2id password hashes (argon2-cffi's defaults, RFC 9106).

`wardgate central user add` calls `add_user`; the console's login calls `verify`, which also
says when a stored hash should be upgraded to the current parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from central.store import ROLES

if TYPE_CHECKING:
    from central.store import Store

_hasher = PasswordHasher()
#: verified against when the user does not exist, so a wrong name costs as long as a wrong password
_DUMMY_HASH = _hasher.hash("wardgate: no such user")
MIN_PASSWORD = 8  # as `wardgate central user add` asks (NIST SP 800-63B)


class AccountError(ValueError):
    """A bad account request: the message says what to change."""


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password too short: use at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify(password_hash: str | None, password: str) -> tuple[bool, str | None]:
    """(matches, new hash to store or None): a new hash when the parameters have changed."""
    try:
        _hasher.verify(password_hash or _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, None
    if password_hash is None:
        return False, None
    if _hasher.check_needs_rehash(password_hash):
        return True, _hasher.hash(password)
    return True, None


def add_user(store: Store, name: str, role: str, display: str, password: str) -> None:
    """Create or update a console account (role, display name, password)."""
    name = name.strip()
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AccountError(f"user name {name!r}: letters, digits, '-', '_' and '.' only")
    if role not in ROLES:
        raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
    store.add_user(name, hash_password(password), role, display.strip() or name)
