"""The node's main loop: sample sensors, talk the node protocol on the UART, drive the sounder.

Alarms and faults are repeated until the gateway acknowledges them (same sequence number, so the
gateway drops the repeats); heartbeats and readings are sent and forgotten. The loop never stops
on an error: it reports an `internal` fault and goes on, because a fire node that crashed is
worse than one that says it is unwell.

Time: `ticks_ms` wraps (every 2**30 ms = 12.4 days on 32-bit boards) and `ticks_diff` is only
meaningful for moments less than half a period (6.2 days) apart. So every tick computation goes
through `hal.ticks_diff`/`hal.ticks_add` between moments close together, and the uptime is
accumulated step by step (seconds plus the leftover milliseconds, small ints on every board)
rather than computed from the boot moment: it never goes backwards, which the gateway would take
for a reboot.
"""

import sys

import node_protocol as np

from . import FIRMWARE, config, sensors

NODE_FAULT_BIT = 31
MAX_PENDING = 32
MAX_RETRY_MS = 2000


def log(*parts):
    print("node:", *parts)


class Node:
    def __init__(self, hal, cfg, config_error=None):
        self.hal = hal
        self.cfg = cfg
        self.id = cfg["node"]
        self.uart = hal.uart(cfg["uart"])
        self.sensors = [sensors.make(i, s, hal) for i, s in enumerate(cfg["sensors"])]
        pin = cfg["sounder_pin"]
        self.sounder = hal.digital_out(pin) if pin is not None else None
        self.sounding = False
        self.silenced = False
        self.seq = 0
        self.pending = {}  # seq -> [frame, due_ms, delay_ms, type]
        self.decoder = np.Decoder()
        self.commands_seen = np.SequenceWindow(32)
        self.boot_id = hal.random32()
        self.started = hal.ticks_ms()
        self.uptime_s = 0  # accumulated by tick(): no wrap
        self._uptime_ms = 0  # the part of a second not yet in uptime_s
        self._uptime_tick = self.started  # the moment up to which uptime is counted
        self.node_faults = {}  # code -> True while active
        self.config_error = config_error
        self.last_reading_ms = None
        self.last_sent = {}  # sensor index -> value in the last reading
        self.next_sample = self.started
        self.next_heartbeat = self.started
        self.running = True
        self.internal_errors = 0

    # --- sending ---------------------------------------------------------------------------
    def send(self, mtype, fields):
        seq = self.seq
        self.seq = np.next_seq(seq)
        frame = np.encode(np.Message(mtype, self.id, seq, fields))
        self.uart.write(frame)
        if mtype in np.ACKED_TYPES:
            if len(self.pending) >= MAX_PENDING:
                self._drop_oldest_pending()
            retry = self.cfg["retry_ms"]
            self.pending[seq] = [
                frame,
                self.hal.ticks_add(self.hal.ticks_ms(), retry),
                retry,
                mtype,
            ]
        return seq

    def _drop_oldest_pending(self):
        # Alarms are kept longest: they are also in every heartbeat, but never lose one early.
        order = sorted(self.pending, key=lambda s: (self.pending[s][3] == np.ALARM, s))
        del self.pending[order[0]]

    def hello(self):
        inventory = [[s.kind, s.name] for s in self.sensors]
        self.send(
            np.HELLO,
            {
                "boot_id": self.boot_id,
                "heartbeat_s": self.cfg["heartbeat_s"],
                "firmware": FIRMWARE,
                "sensors": inventory,
            },
        )

    def heartbeat(self):
        alarms = 0
        faults = 0
        for s in self.sensors:
            if s.latched:
                alarms |= 1 << s.index
            if s.fault.value is not None:
                faults |= 1 << s.index
        if self.node_faults:
            faults |= 1 << NODE_FAULT_BIT
        self.tick(self.hal.ticks_ms())
        self.send(
            np.HEARTBEAT,
            {
                "uptime_s": self.uptime_s,
                "alarms": alarms,
                "faults": faults,
                "flags": np.HEARTBEAT_FLAG_SILENCED if self.silenced else 0,
                "crc_errors": min(self.decoder.crc_errors, 0xFFFF),
            },
        )

    def node_fault(self, code, active):
        if bool(self.node_faults.get(code)) == active:
            return
        if active:
            self.node_faults[code] = True
        else:
            self.node_faults.pop(code, None)
        fields = {"sensor": np.NODE_SENSOR, "code": code, "active": active, "value": 0, "name": ""}
        self.send(np.FAULT, fields)

    # --- events from sensors --------------------------------------------------------------------
    def on_event(self, sensor, event):
        if event[0] == "alarm":
            _, cause, value = event
            fields = {"sensor": sensor.index, "cause": cause, "value": value, "name": sensor.name}
            seq = self.send(np.ALARM, fields)
            self.hal.note("alarm " + sensor.name + " " + cause + " seq=" + str(seq))
            self.silenced = False
        else:
            _, code, active, value = event
            fields = {
                "sensor": sensor.index,
                "code": code,
                "active": active,
                "value": value,
                "name": sensor.name,
            }
            self.send(np.FAULT, fields)
            self.hal.note("fault " + sensor.name + " " + code + " " + str(active))

    def sample(self, now):
        for s in self.sensors:
            for event in s.sample(now):
                self.on_event(s, event)
        self.update_sounder()

    def update_sounder(self):
        on = not self.silenced and any(s.latched for s in self.sensors)
        if on != self.sounding:
            self.sounding = on
            if self.sounder is not None:
                self.sounder.value(1 if on else 0)

    def readings(self, now):
        min_gap = self.cfg["reading_min_s"] * 1000
        since = (
            None if self.last_reading_ms is None else self.hal.ticks_diff(now, self.last_reading_ms)
        )
        if since is not None and since < min_gap:
            return
        due = since is None or since >= self.cfg["reading_s"] * 1000
        values = []
        for s in self.sensors:
            if not s.analog or s.value is None:
                continue
            last = self.last_sent.get(s.index)
            if last is None or abs(s.value - last) >= s.cfg["report_delta"] * 100:
                due = True
            values.append([s.index, s.value])
        if due and values:
            self.send(np.READING, {"values": values})
            self.last_reading_ms = now
            for index, value in values:
                self.last_sent[index] = value

    # --- receiving -------------------------------------------------------------------------
    def poll_uart(self):
        data = self.uart.read()
        if not data:
            return
        for msg in self.decoder.feed(data):
            if msg.node not in (self.id, np.NODE_BROADCAST):
                continue
            if msg.type == np.ACK:
                self.pending.pop(msg.fields["acked"], None)
            elif msg.type == np.COMMAND:
                self.command(msg)

    def command(self, msg):
        name = msg.fields["command"]
        if not self.commands_seen.seen(msg.seq):
            if name == "reset":
                for s in self.sensors:
                    s.reset()
                self.silenced = False
                self.hal.note("reset")
            elif name == "silence":
                self.silenced = True
                self.hal.note("silence")
            elif name == "hello":  # a gateway (re)connected: who we are, and values now
                self.hello()
                self.last_reading_ms = None
                self.last_sent = {}
            self.update_sounder()
        if msg.node != np.NODE_BROADCAST:
            self.send(np.ACK, {"acked": msg.seq, "status": "ok"})

    def retransmit(self, now):
        for seq in list(self.pending):
            entry = self.pending[seq]
            if self.hal.ticks_diff(now, entry[1]) >= 0:
                self.uart.write(entry[0])
                entry[2] = min(entry[2] * 2, MAX_RETRY_MS)
                entry[1] = self.hal.ticks_add(now, entry[2])

    # --- loop ---------------------------------------------------------------------------------
    def tick(self, now):
        """Add the time since the last call to the uptime (called every step, so far < 6.2 days)."""
        elapsed = self.hal.ticks_diff(now, self._uptime_tick)
        if elapsed <= 0:
            return
        self._uptime_tick = now
        ms = self._uptime_ms + elapsed
        self.uptime_s += ms // 1000
        self._uptime_ms = ms % 1000

    def start(self):
        log(FIRMWARE, "node", self.id, "with", len(self.sensors), "sensors")
        self.hello()
        if self.config_error:
            log("config error:", self.config_error)
            self.node_fault("config", True)

    def step(self):
        hal = self.hal
        now = hal.ticks_ms()
        self.tick(now)
        if hal.ticks_diff(now, self.next_sample) >= 0:
            self.sample(now)
            self.next_sample = hal.ticks_add(self.next_sample, self.cfg["sample_ms"])
            if hal.ticks_diff(self.next_sample, now) < 0:  # fell behind: do not race to catch up
                self.next_sample = hal.ticks_add(now, self.cfg["sample_ms"])
            self.readings(now)
        self.poll_uart()
        self.retransmit(now)
        if hal.ticks_diff(now, self.next_heartbeat) >= 0:
            self.heartbeat()
            self.next_heartbeat = hal.ticks_add(now, self.cfg["heartbeat_s"] * 1000)
        wait = hal.ticks_diff(self.next_sample, hal.ticks_ms())
        hal.wait(max(0, min(wait, self.cfg["sample_ms"])))

    def run(self):
        self.start()
        while self.running and not self.hal.stopped():
            try:
                self.step()
            except Exception as exc:  # keep running, but say so
                self.internal_errors += 1
                log("internal error:", repr(exc))
                if hasattr(sys, "print_exception"):
                    sys.print_exception(exc)
                try:
                    self.node_fault("internal", True)
                except Exception:
                    pass
                self.hal.wait(self.cfg["sample_ms"])


def make_hal(argv):
    if sys.platform in ("linux", "darwin"):
        from . import hal_unix

        return hal_unix.make_hal(argv)
    from . import board

    return board.make_hal(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    hal = make_hal(argv)
    error = None
    try:
        cfg = config.load(hal.config_path)
    except config.ConfigError as exc:
        error = str(exc)
        cfg = config.check({"sensors": []})
    try:
        try:
            node = Node(hal, cfg, error)
        except Exception as exc:  # a pin that does not exist on this board, say
            node = Node(hal, config.check({"node": cfg["node"], "uart": cfg["uart"]}), repr(exc))
        node.run()
    finally:
        hal.close()
