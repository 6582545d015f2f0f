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
    pass


def _merge(defaults, given, where):
    out = {}
    for key in defaults:
        out[key] = defaults[key]
    for key in given:
        if key not in defaults and key not in ("kind", "name", "pin", "adc_pin"):
            raise ConfigError(where + "." + key + ": unknown key")
        out[key] = given[key]
    return out


def _number(cfg, key, where, low=None, high=None):
    value = cfg[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(where + "." + key + ": must be a number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(where + "." + key + ": must be between " + str(low) + " and " + str(high))
    return value


def check(given):
    """Returns the full settings (defaults filled in) or raises ConfigError naming the key."""
    cfg = _merge(DEFAULTS, given, "node.json")
    uart = {}
    for key in DEFAULTS["uart"]:
        uart[key] = DEFAULTS["uart"][key]
    for key in cfg["uart"]:
        uart[key] = cfg["uart"][key]
    cfg["uart"] = uart
    _number(cfg, "node", "node.json", 0, 254)
    _number(cfg, "heartbeat_s", "node.json", 1, 3600)
    _number(cfg, "sample_ms", "node.json", 1, 10000)
    _number(cfg, "reading_s", "node.json", 1, 86400)
    _number(cfg, "reading_min_s", "node.json", 0, 86400)
    _number(cfg, "retry_ms", "node.json", 10, 60000)
    if len(cfg["sensors"]) > 32:
        raise ConfigError("node.json.sensors: at most 32 sensors")
    sensors = []
    names = []
    for i, given_sensor in enumerate(cfg["sensors"]):
        where = "node.json.sensors[" + str(i) + "]"
        kind = given_sensor.get("kind")
        if kind not in SENSOR_DEFAULTS:
            raise ConfigError(where + ".kind: one of smoke, heat, flame, call_point")
        sensor = _merge(SENSOR_DEFAULTS[kind], given_sensor, where)
        sensor["kind"] = kind
        sensor["name"] = str(given_sensor.get("name", kind))
        if not is_short_name(sensor["name"]):
            raise ConfigError(
                where + ".name: 1 to 12 letters, digits, '_' or '-' (it becomes the event source)"
            )
        if sensor["name"] in names:
            raise ConfigError(where + ".name: " + sensor["name"] + " is used twice")
        names.append(sensor["name"])
        if "pin" not in sensor:
            raise ConfigError(where + ".pin: required")
        _number(sensor, "debounce", where, 1, 1000)
        if kind == "smoke":
            if not 0 <= sensor["zero"] < sensor["full"] <= 1:
                raise ConfigError(where + ": need 0 <= zero < full <= 1")
            _number(sensor, "alarm_pct", where, 1, 100)
            _number(sensor, "hysteresis_pct", where, 0, 50)
        elif kind == "heat":
            _number(sensor, "fixed_c", where, 30, 150)
            _number(sensor, "hysteresis_c", where, 0, 20)
            _number(sensor, "ror_c_per_min", where, 0, 100)
            _number(sensor, "ror_window_s", where, 1, 600)
            _number(sensor, "beta", where, 1000, 10000)
        elif sensor["input"] not in ("digital", "eol"):
            raise ConfigError(where + ".input: digital or eol")
        sensors.append(sensor)
    cfg["sensors"] = sensors
    return cfg


def load(path):
    try:
        with open(path) as f:
            given = json.load(f)
    except OSError:
        raise ConfigError(path + ": cannot read (copy a node.json next to main.py)") from None
    except ValueError as exc:
        raise ConfigError(path + ": not valid JSON: " + str(exc)) from None
    if not isinstance(given, dict):
        raise ConfigError(path + ": must hold a JSON object")
    return check(given)
