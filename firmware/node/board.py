"""HAL for real boards (RP2040, ESP32) on MicroPython's `machine` module.

Pins in node.json are GPIO numbers. The UART, ADC and watchdog are the board's own; everything
board-specific is in BOARDS, so a new board is a new entry, not new code.
"""

import os
import sys
import time

import machine

BOARDS = {
    # platform: default UART pins and whether the ADC needs attenuation for a 0-3.3 V range
    "rp2": {"uart": {"id": 0, "tx": 0, "rx": 1}, "atten": False},
    "esp32": {"uart": {"id": 2, "tx": 17, "rx": 16}, "atten": True},
}
WATCHDOG_MS = 8000  # RP2040's longest watchdog period is about 8.3 s


class _Analog:
    def __init__(self, pin, atten):
        self.adc = machine.ADC(machine.Pin(pin))
        if atten:
            self.adc.atten(machine.ADC.ATTN_11DB)

    def read_u16(self):
        return self.adc.read_u16()


class _Uart:
    def __init__(self, uart):
        self.uart = uart

    def write(self, data):
        return self.uart.write(data)

    def read(self):
        if self.uart.any():
            return self.uart.read()
        return None


class BoardHal:
    def __init__(self, platform, config_path="node.json"):
        if platform not in BOARDS:
            raise OSError("no board profile for platform " + platform)
        self.board = BOARDS[platform]
        self.config_path = config_path
        self.wdt = machine.WDT(timeout=WATCHDOG_MS)

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_add(self, a, b):
        return time.ticks_add(a, b)

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def random32(self):
        return int.from_bytes(os.urandom(4), "little")

    def analog(self, pin):
        return _Analog(pin, self.board["atten"])

    def digital_in(self, pin, pull_up=False):
        return machine.Pin(pin, machine.Pin.IN, machine.Pin.PULL_UP if pull_up else None)

    def digital_out(self, pin):
        out = machine.Pin(pin, machine.Pin.OUT)
        out.value(0)
        return out

    def uart(self, cfg):
        pins = self.board["uart"]
        uid = pins["id"] if cfg.get("id") is None else cfg["id"]
        tx = pins["tx"] if cfg.get("tx") is None else cfg["tx"]
        rx = pins["rx"] if cfg.get("rx") is None else cfg["rx"]
        uart = machine.UART(
            uid, baudrate=cfg["baud"], tx=machine.Pin(tx), rx=machine.Pin(rx), rxbuf=512
        )
        return _Uart(uart)

    def note(self, what):
        pass

    def stopped(self):
        return False

    def wait(self, ms):
        self.wdt.feed()
        time.sleep_ms(ms)

    def close(self):
        pass


def make_hal(argv):
    return BoardHal(sys.platform)
