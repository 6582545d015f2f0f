"""The console's alert tones, made at startup with the stdlib (`wave`): no binary file to ship.

A fire is a loud two-tone (960/770 Hz, the rhythm of a European siren); a test alarm one soft
low chime, so an ear tells them apart before an eye reaches the screen.
"""

from __future__ import annotations

import io
import math
import struct
import wave

RATE = 22050


def _tone(parts: list[tuple[float, float, float]]) -> bytes:
    """(frequency Hz, seconds, amplitude 0..1) parts → 16-bit mono WAV, with short fades."""
    frames = bytearray()
    fade = int(RATE * 0.01)
    for freq, seconds, amp in parts:
        n = int(RATE * seconds)
        for i in range(n):
            env = min(1.0, i / fade, (n - i) / fade) if fade else 1.0
            value = 0.0 if freq == 0 else math.sin(2 * math.pi * freq * i / RATE)
            frames += struct.pack("<h", int(32767 * amp * env * value))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(bytes(frames))
    return out.getvalue()


def tones() -> dict[str, bytes]:
    fire = [(960.0, 0.25, 0.9), (770.0, 0.25, 0.9)] * 3
    test = [(440.0, 0.35, 0.25)]
    return {"fire": _tone(fire), "test": _tone(test)}
