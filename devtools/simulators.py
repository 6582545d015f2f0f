"""Stand-ins for wiring, for tests, benches and demos: a virtual null-modem cable and a Modbus
RTU detector bus served by pymodbus's own server.

PtyLink is what `socat PTY,link=a PTY,link=b` does: two ptys whose masters are joined by a relay
thread, so two programs can each open a path as they would /dev/ttyUSB0. The relay can corrupt
bytes on their way (line noise) and be cut (a cable pulled).
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import tty
from pathlib import Path
from typing import Any


class PtyLink:
    def __init__(self, link_a: Path | None = None, link_b: Path | None = None) -> None:
        self._masters: list[int] = []
        self.paths: list[str] = []
        self._slaves: list[int] = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            self._masters.append(master)
            self._slaves.append(slave)  # held so that a side can reopen without a hang-up
            self.paths.append(os.ttyname(slave))
        self.links = [link_a, link_b]
        for link, path in zip(self.links, self.paths, strict=True):
            if link is not None:
                link.parent.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)
                link.symlink_to(path)
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._corrupt = [0, 0]  # bytes still to corrupt, per direction (0: a->b, 1: b->a)
        self.relayed = [0, 0]
        self._closed = False
        self._thread = threading.Thread(target=self._relay, name="pty-link", daemon=True)
        self._thread.start()

    @property
    def a(self) -> str:
        return str(self.links[0] or self.paths[0])

    @property
    def b(self) -> str:
        return str(self.links[1] or self.paths[1])

    def corrupt(self, direction: int, count: int) -> None:
        """Flip a bit in each of the next `count` bytes going a->b (0) or b->a (1)."""
        with self._lock:
            self._corrupt[direction] += count

    def _relay(self) -> None:
        ends = {self._masters[0]: 0, self._masters[1]: 1}
        while True:
            try:
                ready, _, _ = select.select([*ends, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                return
            for fd in ready:
                direction = ends[fd]
                try:
                    data = bytearray(os.read(fd, 4096))
                except OSError:
                    continue
                with self._lock:
                    n = min(self._corrupt[direction], len(data))
                    self._corrupt[direction] -= n
                for i in range(n):
                    data[i] ^= 0x04
                self.relayed[direction] += len(data)
                try:
                    os.write(self._masters[1 - direction], data)
                except OSError:
                    pass

    def close(self) -> None:
        """Cut the cable: both ptys and their links disappear."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in [*self._masters, *self._slaves, self._wake_r, self._wake_w]:
            try:
                os.close(fd)
            except OSError:
                pass
        for link in self.links:
            if link is not None:
                link.unlink(missing_ok=True)

    def __enter__(self) -> PtyLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ModbusBus:
    """Modbus RTU detectors (several unit ids) answering on `port`, by pymodbus's own server.

    `registers` maps unit id -> {"input": {addr: value}, "holding": ..., "discrete": ...,
    "coil": ...} (64 addresses of each). Change values while it runs with set(); read what the
    gateway wrote with get(); `mute` holds unit ids that stop answering (a detector that died).
    """

    _FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
    SIZE = 64

    def __init__(self, port: str, registers: dict[int, dict[str, dict[int, int]]], **serial: Any):
        from pymodbus.simulator import DataType, SimData, SimDevice

        def block(values: dict[int, int], bits: bool) -> list[Any]:
            data = [0] * self.SIZE
            for addr, v in values.items():
                data[addr] = int(v)
            kind = DataType.BITS if bits else DataType.REGISTERS
            return [SimData(0, values=[bool(v) for v in data] if bits else data, datatype=kind)]

        self.simdevices = [
            SimDevice(
                unit,
                (
                    block(tables.get("coil", {}), True),
                    block(tables.get("discrete", {}), True),
                    block(tables.get("holding", {}), False),
                    block(tables.get("input", {}), False),
                ),
            )
            for unit, tables in registers.items()
        ]
        self.units = set(registers)
        self.port = port
        self.serial = serial
        self.mute: set[int] = set()
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="modbus-bus", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"Modbus test server did not start: {self._error}")

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    def set(self, unit: int, table: str, address: int, value: int) -> None:
        bits = table in ("coil", "discrete")
        values = [bool(value)] if bits else [int(value)]
        self._call(self._server.context.async_setValues(unit, self._FC[table], address, values))

    def get(self, unit: int, table: str, address: int) -> int:
        got = self._call(self._server.context.async_getValues(unit, self._FC[table], address, 1))
        return int(got[0])

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self.requests += 1
            if data[0] in self.mute or data[0] not in self.units:
                # nobody on the bus answers to that id: the server's framer drops a request
                # whose CRC does not check, as a detector that is not there would not answer
                return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    def _run(self) -> None:
        from pymodbus.server import ModbusSerialServer

        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start(ModbusSerialServer))
        except BaseException as exc:  # reported by __init__
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self, server_class: Any) -> None:
        self._server = server_class(
            self.simdevices, port=self.port, trace_packet=self._trace_packet, **self.serial
        )
        if not await self._server.listen():
            raise RuntimeError(f"cannot open {self.port}")

    def close(self) -> None:
        async def stop() -> None:
            await self._server.shutdown()

        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> ModbusBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
