"""Node settings: defaults, loading node.json, and checks that say which key is wrong.

A node that cannot understand its settings still boots, reports a `config` fault and keeps
sending heartbeats, so a technician sees the problem at the gateway instead of a silent node.
"""

import json

try:  # CPython: wardgate's protocol package (build checks, tests, devtools.unix_node)
    from protocol.names import is_short_name
except ImportError:  # MicroPython: names.mpy at the root of the bundle, next to node_protocol
    from names import is_short_name

DEFAULTS = {
    "node": 1,
    "heartbeat_s": 5,
    "sample_ms": 50,
    "reading_s": 10,  # a reading at least this often...
    "reading_min_s": 1,  # ...and on a change, at most this often
    "retry_ms": 200,  # first retransmission of an unacknowledged alarm/fault; doubles to 2 s
    "sounder_pin": None,
    "uart": {"id": 0, "baud": 115200, "tx": None, "rx": None},
    "sensors": [],
}

SENSOR_DEFAULTS = {
    # 4-20 mA optical smoke head on a shunt: ADC fraction 0.19 at 4 mA (0 %), 0.95 at 20 mA
    # (100 %); below 0.10 (about 2 mA) the loop is open, above 0.99 it is shorted.
    "smoke": {
        "zero": 0.19,
        "full": 0.95,
        "alarm_pct": 50.0,
        "hysteresis_pct": 5.0,
        "report_delta": 2.0,
        "open_below": 0.10,
        "short_above": 0.99,
        "debounce": 4,
    },
    # NTC from the ADC input to ground, series resistor to the reference. EN 54-5 class A1:
    # static response between 54 and 65 degC; rate-of-rise (class A1R) set by ror_c_per_min.
    "heat": {
        "r_series": 10000.0,
        "r0": 10000.0,
        "t0_c": 25.0,
        "beta": 3950.0,
        "fixed_c": 58.0,
        "hysteresis_c": 2.0,
        "ror_c_per_min": 10.0,  # 0 disables rate-of-rise
        "ror_window_s": 30.0,
        "report_delta": 0.5,
        "open_above": 0.98,
        "short_below": 0.02,
        "debounce": 4,
    },
    # Contacts: "digital" (a plain input, no line supervision) or "eol" (the line is read on an
    # ADC through an end-of-line resistor, so open and short circuits are told apart).
    "flame": {"input": "digital", "active_low": True, "debounce": 3},
    "call_point": {"input": "digital", "active_low": True, "debounce": 2},
}
EOL_BANDS = {"short_below": 0.04, "alarm_below": 0.30, "open_above": 0.85}


class ConfigError(ValueError):
    """Every problem found in one settings file: `problems` is a list of (key path, reason).

    A key path is a tuple such as ("sensors", 0, "kind"); str() is one line per problem,
    `file: sensors[0].kind: reason`, so the file named is the one that was read.
    """

    def __init__(self, problems, source="node.json"):
        self.problems = problems
        self.source = source
        super().__init__("; ".join(describe(source, path, why) for path, why in problems))


def key_name(path):
    """("sensors", 0, "kind") -> "sensors[0].kind"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += "[" + str(part) + "]"
        else:
            out += ("." if out else "") + part
    return out


def describe(source, path, why, line=None):
    where = source if line is None else source + ":" + str(line)
    if path:
        where += ": " + key_name(path)
    return where + ": " + why


class _Problems:
    def __init__(self):
        self.found = []

    def add(self, path, why):
        self.found.append((path, why))


def _merge(defaults, given, path, problems, extra=()):
    out = {}
    for key in defaults:
        out[key] = defaults[key]
    for key in given:
        if key not in defaults and key not in extra:
            problems.add(path + (key,), "unknown key")
            continue
        out[key] = given[key]
    return out


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(cfg, key, path, problems, low=None, high=None):
    """True if cfg[key] is a number within [low, high]; otherwise records why not."""
    value = cfg[key]
    if not _is_number(value):
        problems.add(path + (key,), "must be a number")
        return False
    if (low is not None and value < low) or (high is not None and value > high):
        problems.add(path + (key,), "must be between " + str(low) + " and " + str(high))
        return False
    return True


def _pin(value):
    # a GPIO number on a board; the unix port (tests, `wardgate node simulate`) names its pins
    return (_is_number(value) and value == int(value) and value >= 0) or (
        isinstance(value, str) and value != ""
    )


SENSOR_KEYS = ("kind", "name", "pin")


def _check_sensor(i, given, names, problems):
    path = ("sensors", i)
    if not isinstance(given, dict):
        problems.add(path, "must be an object with kind, name and pin")
        return None
    kind = given.get("kind")
    if kind not in SENSOR_DEFAULTS:
        problems.add(path + ("kind",), "one of smoke, heat, flame, call_point")
        return None
    sensor = _merge(SENSOR_DEFAULTS[kind], given, path, problems, SENSOR_KEYS)
    sensor["kind"] = kind
    sensor["name"] = str(given.get("name", kind))
    if not is_short_name(sensor["name"]):
        problems.add(
            path + ("name",), "1 to 12 letters, digits, '_' or '-' (it becomes the event source)"
        )
    elif sensor["name"] in names:
        problems.add(path + ("name",), sensor["name"] + " is used twice")
    names.append(sensor["name"])
    if "pin" not in sensor:
        problems.add(path + ("pin",), "required")
    elif not _pin(sensor["pin"]):
        problems.add(path + ("pin",), "a GPIO number (or, on the unix port, a pin name)")
    _number(sensor, "debounce", path, problems, 1, 1000)
    if kind == "smoke":
        zero_ok = _number(sensor, "zero", path, problems, 0, 1)
        full_ok = _number(sensor, "full", path, problems, 0, 1)
        if zero_ok and full_ok and not sensor["zero"] < sensor["full"]:
            problems.add(path, "need 0 <= zero < full <= 1")
        _number(sensor, "alarm_pct", path, problems, 1, 100)
        _number(sensor, "hysteresis_pct", path, problems, 0, 50)
    elif kind == "heat":
        _number(sensor, "fixed_c", path, problems, 30, 150)
        _number(sensor, "hysteresis_c", path, problems, 0, 20)
        _number(sensor, "ror_c_per_min", path, problems, 0, 100)
        _number(sensor, "ror_window_s", path, problems, 1, 600)
        _number(sensor, "beta", path, problems, 1000, 10000)
    elif sensor["input"] not in ("digital", "eol"):
        problems.add(path + ("input",), "digital or eol")
    return sensor


def check(given, source="node.json"):
    """The full settings (defaults filled in), or ConfigError listing every problem in `given`.

    `source` is the file the settings came from: every problem names it.
    """
    problems = _Problems()
    if not isinstance(given, dict):
        raise ConfigError([((), "must hold a JSON object")], source)
    cfg = _merge(DEFAULTS, given, (), problems)
    uart = {}
    for key in DEFAULTS["uart"]:
        uart[key] = DEFAULTS["uart"][key]
    if isinstance(cfg["uart"], dict):
        uart = _merge(uart, cfg["uart"], ("uart",), problems)
        _number(uart, "baud", ("uart",), problems, 300, 4000000)
        for key in ("id", "tx", "rx"):
            if uart[key] is not None:
                _number(uart, key, ("uart",), problems, 0, 1000)
    else:
        problems.add(("uart",), "must be an object: id, baud, tx, rx")
    cfg["uart"] = uart
    _number(cfg, "node", (), problems, 0, 254)
    _number(cfg, "heartbeat_s", (), problems, 1, 3600)
    _number(cfg, "sample_ms", (), problems, 1, 10000)
    _number(cfg, "reading_s", (), problems, 1, 86400)
    _number(cfg, "reading_min_s", (), problems, 0, 86400)
    _number(cfg, "retry_ms", (), problems, 10, 60000)
    if cfg["sounder_pin"] is not None and not _pin(cfg["sounder_pin"]):
        problems.add(("sounder_pin",), "a GPIO number (or, on the unix port, a pin name)")
    sensors = []
    if not isinstance(cfg["sensors"], list):
        problems.add(("sensors",), "must be a list")
    else:
        if len(cfg["sensors"]) > 32:
            problems.add(("sensors",), "at most 32 sensors")
        names = []
        for i, given_sensor in enumerate(cfg["sensors"]):
            sensor = _check_sensor(i, given_sensor, names, problems)
            if sensor is not None:
                sensors.append(sensor)
    if problems.found:
        raise ConfigError(problems.found, source)
    cfg["sensors"] = sensors
    return cfg


def load(path):
    try:
        with open(path) as f:
            given = json.load(f)
    except OSError:
        raise ConfigError([((), "cannot read (copy a node.json next to main.py)")], path) from None
    except ValueError as exc:
        raise ConfigError([((), "not valid JSON: " + str(exc))], path) from None
    return check(given, path)
