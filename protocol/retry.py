"""The one backoff (issue 14): capped exponential delays with full jitter.

Every retry loop of every role waits with this: the uplink's and the receivers' MQTT reconnects
(protocol/mqtt.py), pipeline restarts (edge/runtime.py), camera reconnects
(edge/vision/sources.py), serial port reopens (sensor_drivers/port.py), webhook retries
(central/webhook.py) and the SIA DC-09 hand-over (central/dc09.py). Full jitter ("Exponential
Backoff And Jitter", AWS Architecture Blog, 2015): the n-th delay is uniform in
[0, min(cap, initial * 2**n)], so a fleet of gateways that lost the broker at the same moment
does not come back in lockstep.

Plain code on purpose: `protocol` is the light package of the decoder-only install (no `backoff`
package there), and the serial and camera loops must not load paho to wait.
"""

from __future__ import annotations

import random

__all__ = ["Backoff", "full_jitter"]


def full_jitter(value: float) -> float:
    """A delay uniform in [0, value]. Looked up at call time: a test may make it exact."""
    return random.uniform(0.0, value)


class Backoff:
    """Delays of one retry streak: `next()` for the next wait, `reset()` once it worked.

    Backoff(0.5, 30) waits up to 0.5, 1, 2, 4, ... 30, 30, ... seconds (each uniform below).
    """

    __slots__ = ("initial_s", "cap_s", "floor_s", "_attempt")

    def __init__(self, initial_s: float, cap_s: float, *, floor_s: float = 0.0) -> None:
        if not 0 < initial_s <= cap_s:
            raise ValueError(f"backoff: need 0 < initial ({initial_s}) <= cap ({cap_s})")
        self.initial_s = float(initial_s)
        self.cap_s = float(cap_s)
        self.floor_s = float(floor_s)  # added to every delay (a restart never spins)
        self._attempt = 0

    def ceiling(self) -> float:
        """The bound of the next delay: initial * 2**attempt, capped."""
        if self._attempt >= 64:  # 2**64 * anything positive is past any cap
            return self.cap_s
        return min(self.cap_s, self.initial_s * 2.0**self._attempt)

    def next(self) -> float:
        """The next delay in seconds: floor + full jitter of the current ceiling."""
        ceiling = self.ceiling()
        self._attempt += 1
        return self.floor_s + full_jitter(ceiling)

    def reset(self) -> None:
        """It worked: the next streak starts at `initial_s` again."""
        self._attempt = 0

    @property
    def attempt(self) -> int:
        return self._attempt

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        return self.next()
