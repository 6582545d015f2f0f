"""The boards `wardgate firmware build --board` knows: CPU (mpy-cross -march) and pin map.

Build-side only (never in a bundle): a node.json for a board is checked against its pins before
anything is compiled, so a pin the board does not have, or a sensor that needs an ADC on a pin
without one, fails the build with the file and line instead of a `config` fault on site. The
HAL on the board is node/board.py for every board (keyed by the `sys.platform` it reports); a new
board is an entry here and, for a new platform, one in node/board.py's BOARDS.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOARD_HAL = Path(__file__).resolve().parent / "node" / "board.py"

#: sensors read on an ADC: analog heads, and contacts supervised through an end-of-line resistor
ANALOG_KINDS = ("smoke", "heat")


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    march: str  # mpy-cross -march for native code on this CPU
    platform: str  # sys.platform on the board: its entry in node/board.py BOARDS
    gpio: frozenset[int]  # pins a sensor may use
    adc: frozenset[int]  # pins with an ADC channel
    input_only: frozenset[int] = frozenset()  # cannot drive the sounder or a UART TX


BOARDS = {
    b.name: b
    for b in (
        Board(
            "pico",
            "Raspberry Pi Pico (RP2040): GPIO 0-22, 26-28; ADC on 26, 27, 28",
            march="armv6m",
            platform="rp2",
            gpio=frozenset([*range(0, 23), 26, 27, 28]),
            adc=frozenset([26, 27, 28]),
        ),
        Board(
            "esp32",
            "ESP32 DevKit (ESP32-WROOM-32): GPIO 0-5, 12-19, 21-23, 25-27, 32-39 (6-11 are the "
            "flash); ADC1 on 32-36, 39; 34-39 input only",
            march="xtensawin",
            platform="esp32",
            gpio=frozenset([*range(0, 6), *range(12, 20), 21, 22, 23, 25, 26, 27, *range(32, 40)]),
            adc=frozenset([32, 33, 34, 35, 36, 39]),
            input_only=frozenset(range(34, 40)),
        ),
    )
}


def hal_defaults(platform: str) -> dict[str, Any]:
    """node/board.py's BOARDS entry for `platform` (its UART pins), read from the source: the
    board HAL imports `machine`, so CPython cannot import it."""
    for node in ast.parse(BOARD_HAL.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
            "BOARDS"
        ]:
            return ast.literal_eval(node.value)[platform]
    raise LookupError(f"{BOARD_HAL}: no BOARDS table")


def pin_problems(board: Board, cfg: dict[str, Any]) -> list[tuple[tuple, str]]:
    """(key path, reason) for every pin in node settings (checked or not) that `board` lacks."""
    problems: list[tuple[tuple, str]] = []
    used: dict[int, tuple] = {}

    def pin(path: tuple, value: Any, needs_adc: bool = False, output: bool = False) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(
                (path, f"{value!r} is not a GPIO number ({board.name} pins are numbers)")
            )
            return
        if value not in board.gpio:
            problems.append((path, f"GPIO {value} is not usable on {board.description}"))
            return
        if needs_adc and value not in board.adc:
            adc = ", ".join(str(p) for p in sorted(board.adc))
            problems.append((path, f"GPIO {value} has no ADC on {board.name} (ADC pins: {adc})"))
        if output and value in board.input_only:
            problems.append((path, f"GPIO {value} is input only on {board.name}"))
        if value in used:
            from firmware.node.config import key_name

            problems.append((path, f"GPIO {value} is already used by {key_name(used[value])}"))
        used[value] = path

    sensors = cfg.get("sensors")
    for i, sensor in enumerate(sensors if isinstance(sensors, list) else []):
        if isinstance(sensor, dict) and "pin" in sensor:
            analog = sensor.get("kind") in ANALOG_KINDS or sensor.get("input") == "eol"
            pin(("sensors", i, "pin"), sensor["pin"], needs_adc=analog)
    if cfg.get("sounder_pin") is not None:
        pin(("sounder_pin",), cfg["sounder_pin"], output=True)
    uart = cfg.get("uart") if isinstance(cfg.get("uart"), dict) else {}
    uart_defaults = hal_defaults(board.platform)["uart"]
    for key in ("tx", "rx"):  # the board HAL's default UART pins when node.json gives none
        value = uart.get(key) if uart.get(key) is not None else uart_defaults[key]
        pin(("uart", key), value, output=key == "tx")
    return problems
