"""What the console is told by the service that runs it (one dataclass, no config parsing here)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass
class ConsoleSettings:
    """The console's knobs; the service (`wardgate central run`) fills them from its config.

    `secret_key` signs the session cookies: keep it stable across restarts (a new key logs
    everybody out) and secret (whoever has it can forge a session).
    """

    secret_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    #: a login lasts one shift; after that the dispatcher logs in again
    session_minutes: float = 12 * 60
    #: the queue flags an incident nobody took after this long (the store marks `escalated_ms`)
    escalate_after_s: float = 60.0
    #: the response-time report's target from received to taken (NFPA 72: 90 s)
    target_s: float = 90.0
    #: the map's base layer, e.g. "https://gis.example/tiles/{z}/{x}/{y}.png"; None = offline view
    tile_url: str | None = None
    tile_attribution: str = ""
    #: mark the session cookie Secure (serve the console over TLS, then set this)
    https_only: bool = False
    site_name: str = "Fire brigade"
    title: str = "wardgate console"
    #: seconds between keep-alive pings on the server-push stream
    keepalive_s: float = 15.0

    def __post_init__(self) -> None:
        if isinstance(self.secret_key, str):
            self.secret_key = self.secret_key.encode()
        if len(self.secret_key) < 16:
            raise ValueError("ConsoleSettings.secret_key: use at least 16 random bytes")
        if not 1 <= self.session_minutes <= 7 * 24 * 60:
            raise ValueError("ConsoleSettings.session_minutes: between 1 minute and 7 days")
        if self.escalate_after_s <= 0 or self.target_s <= 0:
            raise ValueError("ConsoleSettings: escalate_after_s and target_s must be positive")
