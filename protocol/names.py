"""The one name rule: a short, source-safe name (a node's sensor, a Modbus device or flag name, a
profile point): 1-12 ASCII letters, digits, '_' or '-', starting with a letter or digit. Such a
name starts or ends an event's `source`, so it must be short and safe in topics, logs and CSV.

Runs under MicroPython too (compiled into the node firmware bundle as names.mpy): no `re`, no
typing at run time. CPython callers that want a regular expression (pydantic's `pattern=`) use
SHORT_NAME_PATTERN; tests/test_structure.py checks that it accepts exactly what
is_short_name() accepts.
"""

SHORT_NAME_MAX = 12
#: the same rule as a regular expression (pydantic Field(pattern=...), JSON schema)
SHORT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,11}$"
#: how the rule reads in an error message
SHORT_NAME_RULE = "1-12 letters, digits, '_' or '-'"


def _alnum(ch):
    return "a" <= ch <= "z" or "A" <= ch <= "Z" or "0" <= ch <= "9"


def is_short_name(name):
    """True if `name` follows the rule (any other type: False)."""
    if not isinstance(name, str) or not 1 <= len(name) <= SHORT_NAME_MAX:
        return False
    if not _alnum(name[0]):
        return False
    return all(_alnum(ch) or ch == "_" or ch == "-" for ch in name)


def node_label(node):
    """A sensor node's event source prefix: node 7 is `n07` (its sensors `n07/smoke`, ...)."""
    return f"n{node:02d}"
