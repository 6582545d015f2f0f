"""Fire sensors: sampling, debounce, hysteresis, latching alarms and line supervision.

Every sensor turns one sample into zero or more events:
    ("alarm", cause, value)            the alarm latched (it stays latched until reset())
    ("fault", code, active, value)     a line fault appeared (active=True) or cleared
Values are integers in hundredths of the sensor's unit (the wire format's VALUE_SCALE).
"""

import math

from .config import EOL_BANDS

ADC_FULL = 65535
KELVIN = 273.15


class Settle:
    """A value that changes only after `count` consecutive samples agree on a new one."""

    def __init__(self, count, value):
        self.count = count
        self.value = value
        self._candidate = value
        self._run = 0

    def update(self, observed):
        """Returns True when the settled value changed."""
        if observed == self.value:
            self._run = 0
            return False
        if observed != self._candidate:
            self._candidate = observed
            self._run = 0
        self._run += 1
        if self._run >= self.count:
            self.value = observed
            self._run = 0
            return True
        return False

    def force(self, value):
        self.value = value
        self._candidate = value
        self._run = 0


class Sensor:
    analog = False  # sends readings

    def __init__(self, index, cfg, hal):
        self.index = index
        self.name = cfg["name"]
        self.kind = cfg["kind"]
        self.cfg = cfg
        self.latched = False
        self.cause = None
        self.value = None  # last sample, hundredths of the unit; None while in fault
        self.fault = Settle(cfg["debounce"], None)
        self.ticks_diff = hal.ticks_diff

    def reset(self):
        """Clear the latched alarm; a condition still present alarms again after debounce."""
        self.latched = False
        self.cause = None
        self._rearm()

    def _rearm(self):
        pass

    def sample(self, now_ms):
        raise NotImplementedError

    def _fault_events(self, code, value):
        events = []
        old = self.fault.value
        if self.fault.update(code):
            if old is not None:
                events.append(("fault", old, False, value))
            if code is not None:
                events.append(("fault", code, True, value))
        return events

    def _latch(self, cause, value):
        if self.latched:
            return []
        self.latched = True
        self.cause = cause
        return [("alarm", cause, value)]


class Smoke(Sensor):
    """Optical smoke head with a 4-20 mA output: alarm above alarm_pct, with hysteresis."""

    analog = True

    def __init__(self, index, cfg, hal):
        super().__init__(index, cfg, hal)
        self.adc = hal.analog(cfg["pin"])
        self.condition = Settle(cfg["debounce"], False)

    def _rearm(self):
        self.condition.force(False)

    def sample(self, now_ms):
        c = self.cfg
        f = self.adc.read_u16() / ADC_FULL
        pct = (f - c["zero"]) * 100.0 / (c["full"] - c["zero"])
        value = int(round(pct * 100))
        code = None
        if f < c["open_below"]:
            code = "open"
        elif f > c["short_above"]:
            code = "short"
        events = self._fault_events(code, value)
        if self.fault.value is not None:
            self.value = None
            self.condition.force(False)
            return events
        self.value = value
        if self.condition.value:
            over = pct > c["alarm_pct"] - c["hysteresis_pct"]
        else:
            over = pct >= c["alarm_pct"]
        if self.condition.update(over) and over:
            events += self._latch("smoke", value)
        return events


def ntc_celsius(fraction, cfg):
    """Temperature of an NTC read through a divider (NTC to ground), by the Beta equation."""
    r = cfg["r_series"] * fraction / (1.0 - fraction)
    inv = 1.0 / (cfg["t0_c"] + KELVIN) + math.log(r / cfg["r0"]) / cfg["beta"]
    return 1.0 / inv - KELVIN


def ntc_fraction(celsius, cfg):
    """The ADC fraction an NTC at `celsius` gives: the inverse of ntc_celsius."""
    r = cfg["r0"] * math.exp(
        cfg["beta"] * (1.0 / (celsius + KELVIN) - 1.0 / (cfg["t0_c"] + KELVIN))
    )
    return r / (r + cfg["r_series"])


class Heat(Sensor):
    """NTC heat detector: fixed threshold (EN 54-5 A1: 54-65 degC) and rate of rise."""

    analog = True

    def __init__(self, index, cfg, hal):
        super().__init__(index, cfg, hal)
        self.adc = hal.analog(cfg["pin"])
        self.condition = Settle(cfg["debounce"], False)
        self.rising = Settle(cfg["debounce"], False)
        self.history = []  # (ticks_ms, degC), spaced so that about 20 cover the window
        self.window_ms = int(cfg["ror_window_s"] * 1000)
        self.spacing_ms = max(1, self.window_ms // 20)
        self.slope = None  # degC per minute once the window is full

    def _rearm(self):
        self.condition.force(False)
        self.rising.force(False)

    def _rate(self, now_ms, celsius):
        ticks_diff = self.ticks_diff
        hist = self.history
        if not hist or ticks_diff(now_ms, hist[-1][0]) >= self.spacing_ms:
            hist.append((now_ms, celsius))
        while len(hist) > 2 and ticks_diff(now_ms, hist[1][0]) >= self.window_ms:
            hist.pop(0)
        span = ticks_diff(now_ms, hist[0][0])
        if span < self.window_ms * 9 // 10 or span <= 0:
            return None
        return (celsius - hist[0][1]) * 60000.0 / span

    def sample(self, now_ms):
        c = self.cfg
        f = self.adc.read_u16() / ADC_FULL
        code = None
        if f > c["open_above"]:
            code = "open"
        elif f < c["short_below"]:
            code = "short"
        celsius = ntc_celsius(min(max(f, 0.001), 0.999), c)
        value = int(round(celsius * 100))
        events = self._fault_events(code, value)
        if self.fault.value is not None:
            self.value = None
            self.history = []
            self.slope = None
            self._rearm()
            return events
        self.value = value
        if self.condition.value:
            hot = celsius > c["fixed_c"] - c["hysteresis_c"]
        else:
            hot = celsius >= c["fixed_c"]
        if self.condition.update(hot) and hot:
            events += self._latch("heat", value)
        if c["ror_c_per_min"] > 0:
            self.slope = self._rate(now_ms, celsius)
            limit = c["ror_c_per_min"] * (0.5 if self.rising.value else 1.0)
            rising = self.slope is not None and self.slope >= limit
            if self.rising.update(rising) and rising:
                events += self._latch("heat_ror", int(round(self.slope * 100)))
        return events


class Contact(Sensor):
    """Flame detector relay or manual call point: a digital input or a supervised EOL line."""

    def __init__(self, index, cfg, hal):
        super().__init__(index, cfg, hal)
        self.eol = cfg["input"] == "eol"
        if self.eol:
            self.adc = hal.analog(cfg["pin"])
        else:
            self.pin = hal.digital_in(cfg["pin"], pull_up=cfg["active_low"])
        self.condition = Settle(cfg["debounce"], False)
        self.cause = None

    def _rearm(self):
        self.condition.force(False)

    def _read(self):
        """(active, fault code or None)"""
        if not self.eol:
            level = self.pin.value()
            return (level == 0) if self.cfg["active_low"] else (level == 1), None
        f = self.adc.read_u16() / ADC_FULL
        b = EOL_BANDS
        if f < b["short_below"]:
            return False, "short"
        if f > b["open_above"]:
            return False, "open"
        return f < b["alarm_below"], None

    def sample(self, now_ms):
        active, code = self._read()
        events = self._fault_events(code, 0)
        if self.fault.value is not None:
            self.condition.force(False)
            return events
        if self.condition.update(active) and active:
            events += self._latch(self.kind, 100)
        return events


KINDS = {"smoke": Smoke, "heat": Heat, "flame": Contact, "call_point": Contact}


def make(index, cfg, hal):
    return KINDS[cfg["kind"]](index, cfg, hal)
