"""HAL for the MicroPython unix port: the firmware runs unchanged on a PC, for tests and demos.

    micropython main.py --uart fd:5|/dev/pts/N --config node.json [--set NAME=VALUE ...]

The UART is a pty (an inherited master fd, or a path). Sensor inputs are driven through stdin,
one command a line:  `set NAME VALUE`  (analog pins: VALUE is the ADC fraction 0..1; digital
pins: 0 or 1), `advance MS` (tests: the node's clock jumps MS milliseconds forward, 0 < MS <
2**28, as if that much time had passed) and `quit`. End of stdin also stops the node, so a node
started by a test never outlives it. Outputs and notable moments go to stdout:
    OUT <pin> <0|1>                                  an output pin changed
    EDGE <what> t_ns=<CLOCK_REALTIME ns>             e.g. "EDGE alarm flame flame seq=4 ..."

The clock is the one a 32-bit board has: `ticks_ms` wraps at 2**30 ms (12.4 days; ticks_diff is
only meaningful within half of that), not at the unix port's own 2**62, so tick arithmetic that
would break on a board breaks here too. The environment variable WARDGATE_NODE_TICKS_START
(tests only) starts the counter at that value, e.g. just before the wrap.
"""

import os
import select
import sys
import termios
import time

ADC_FULL = 65535
TICKS_PERIOD = 1 << 30  # MicroPython's ticks period on 32-bit ports (small-int range)
TICKS_MASK = TICKS_PERIOD - 1
TICKS_HALF = TICKS_PERIOD >> 1
MAX_ADVANCE_MS = 1 << 28  # a jump must stay well within ticks_diff's half period


class _Input:
    def __init__(self, hal, name, default):
        self.hal = hal
        self.name = name
        hal.inputs.setdefault(name, default)

    def read_u16(self):
        return int(round(min(max(self.hal.inputs[self.name], 0.0), 1.0) * ADC_FULL))

    def value(self):
        return 1 if self.hal.inputs[self.name] >= 0.5 else 0


class _Output:
    def __init__(self, name):
        self.name = name
        self.level = None

    def value(self, level=None):
        if level is None:
            return self.level or 0
        if level != self.level:
            self.level = level
            print("OUT", self.name, level)


class _Uart:
    """A pty. Like a real UART, bytes written while nobody listens (hang-up) are lost."""

    def __init__(self, spec, baud):
        if spec.startswith("fd:"):
            self.file = open(int(spec[3:]), "r+b")  # noqa: SIM115 (held for the run)
        else:
            self.file = open(spec, "r+b")  # noqa: SIM115
            attrs = termios.tcgetattr(self.file.fileno())
            termios.setraw(self.file.fileno())
            speed = getattr(termios, "B" + str(baud), attrs[4])
            attrs = termios.tcgetattr(self.file.fileno())
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(self.file.fileno(), termios.TCSANOW, attrs)
        self.poll = select.poll()
        self.poll.register(self.file, select.POLLIN | select.POLLOUT)
        self.lost = 0

    def _state(self):
        flags = 0
        for _, ev in self.poll.poll(0):
            flags |= ev
        return flags

    def write(self, data):
        state = self._state()
        if state & (select.POLLHUP | select.POLLERR) or not state & select.POLLOUT:
            self.lost += len(data)
            return 0
        return self.file.write(data)

    def read(self):
        out = bytearray()
        while len(out) < 512:
            state = self._state()
            if state & (select.POLLHUP | select.POLLERR) or not state & select.POLLIN:
                break
            out += self.file.read(1)
        return bytes(out) if out else None

    def hung_up(self):
        return bool(self._state() & (select.POLLHUP | select.POLLERR))

    def close(self):
        self.file.close()


class UnixHal:
    def __init__(self, uart_spec, config_path, inputs):
        self.uart_spec = uart_spec
        self.config_path = config_path
        self.inputs = inputs
        self.outputs = {}
        self._uart = None
        self._stdin = open(0, "rb")  # noqa: SIM115
        self._line = bytearray()
        self._stopped = False
        self._wait = select.poll()
        self._wait.register(self._stdin, select.POLLIN)
        self._uart_registered = False
        self._hup_until = 0
        start = os.getenv("WARDGATE_NODE_TICKS_START")
        # offset so that the first ticks_ms() is `start` (mod the period)
        self._ticks_offset = (int(start) - time.ticks_ms()) & TICKS_MASK if start else 0

    # clock: a 30-bit ticks counter, as on a 32-bit board
    def ticks_ms(self):
        return (time.ticks_ms() + self._ticks_offset) & TICKS_MASK

    def ticks_add(self, a, b):
        return (a + b) & TICKS_MASK

    def ticks_diff(self, a, b):
        return ((a - b + TICKS_HALF) & TICKS_MASK) - TICKS_HALF

    def random32(self):
        return int.from_bytes(os.urandom(4), "little")

    # pins
    def analog(self, pin):
        return _Input(self, str(pin), 0.0)

    def digital_in(self, pin, pull_up=False):
        return _Input(self, str(pin), 1.0 if pull_up else 0.0)

    def digital_out(self, pin):
        out = _Output(str(pin))
        out.value(0)
        self.outputs[str(pin)] = out
        return out

    def uart(self, cfg):
        self._uart = _Uart(self.uart_spec, cfg["baud"])
        self._wait.register(self._uart.file, select.POLLIN)
        self._uart_registered = True
        return self._uart

    # events
    def note(self, what):
        print("EDGE", what, "t_ns=" + str(time.time_ns()))

    def stopped(self):
        return self._stopped

    def wait(self, ms):
        """Sleep up to `ms`, waking early on UART input; serve control commands meanwhile."""
        uart = self._uart
        if (
            uart is not None
            and not self._uart_registered
            and time.ticks_diff(time.ticks_ms(), self._hup_until) >= 0
        ):
            self._wait.register(uart.file, select.POLLIN)
            self._uart_registered = True
        for obj, ev in self._wait.poll(ms):
            if obj is self._stdin or (hasattr(obj, "fileno") and obj.fileno() == 0):
                self._control(ev)
            elif ev & (select.POLLHUP | select.POLLERR):
                # nobody has the other end open: look again in 100 ms rather than spin
                self._wait.unregister(uart.file)
                self._uart_registered = False
                self._hup_until = time.ticks_add(time.ticks_ms(), 100)
                time.sleep_ms(min(ms, 100))

    def _control(self, ev):
        if not ev & select.POLLIN:
            self._stopped = True  # stdin closed: the test that started us is gone
            return
        byte = self._stdin.read(1)
        if not byte:
            self._stopped = True
            return
        if byte != b"\n":
            self._line += byte
            return
        words = str(self._line, "utf-8").split()
        self._line = bytearray()
        if not words:
            return
        if words[0] == "set" and len(words) == 3:
            self.inputs[words[1]] = float(words[2])
        elif words[0] == "advance" and len(words) == 2 and words[1].isdigit():
            ms = int(words[1])
            if 0 < ms < MAX_ADVANCE_MS:
                self._ticks_offset = (self._ticks_offset + ms) & TICKS_MASK
                print("node: clock advanced", ms, "ms, ticks now", self.ticks_ms())
            else:
                print("node: advance must be between 1 and", MAX_ADVANCE_MS - 1, "ms")
        elif words[0] == "quit":
            self._stopped = True
        else:
            print("node: unknown control command:", " ".join(words))

    def close(self):
        if self._uart is not None:
            self._uart.close()


def make_hal(argv):
    uart = None
    config_path = "node.json"
    inputs = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--uart", "--config", "--set") and i + 1 < len(argv):
            value = argv[i + 1]
            if arg == "--uart":
                uart = value
            elif arg == "--config":
                config_path = value
            else:
                name, _, level = value.partition("=")
                inputs[name] = float(level)
            i += 2
        else:
            sys.stderr.write(
                "usage: micropython main.py --uart fd:N|PATH [--config node.json]"
                " [--set PIN=VALUE ...]\n"
            )
            raise SystemExit(2)
    if uart is None:
        sys.stderr.write("--uart is required (fd:N for an inherited pty master, or a path)\n")
        raise SystemExit(2)
    return UnixHal(uart, config_path, inputs)
