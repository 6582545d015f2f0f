"""Readings by exception: report a value when it changed enough, but not too often."""

from __future__ import annotations

import time


class ReadingGate:
    """Per-source rate limit and deadband for `reading` events.

    A value is reported when it moved by at least its deadband since the last report and
    `min_interval_s` has passed, or when `max_interval_s` has passed whatever it did.
    """

    def __init__(self, min_interval_s: float, max_interval_s: float, deadband_pct: float) -> None:
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.deadband_pct = deadband_pct
        self._last: dict[str, tuple[float, float]] = {}  # source -> (value, monotonic time)
        self.suppressed = 0

    def check(
        self, source: str, value: float, deadband: float | None = None, now: float | None = None
    ) -> bool:
        """True if this reading should be emitted now (and then it counts as reported)."""
        now = time.monotonic() if now is None else now
        last = self._last.get(source)
        if last is not None:
            last_value, last_at = last
            age = now - last_at
            band = deadband if deadband is not None else abs(last_value) * self.deadband_pct / 100
            changed = abs(value - last_value) >= band and value != last_value
            if age < self.min_interval_s or (not changed and age < self.max_interval_s):
                self.suppressed += 1
                return False
        self._last[source] = (value, now)
        return True

    def forget(self, source_prefix: str) -> None:
        """After a fault the next good value is news: report it at once."""
        for source in [s for s in self._last if s.startswith(source_prefix)]:
            del self._last[source]
