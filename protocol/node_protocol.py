"""Wire protocol between fire-sensor nodes and the gateway (spec: docs/node-protocol.md).

This one module runs on both MicroPython (the node firmware bundles it) and CPython (the gateway
driver), so it uses only what both have: struct, binascii and plain classes; no typing, no
dataclasses. tests/data/node_vectors.json pins the bytes; both interpreters must pass it.

A frame on the wire is  0x00 | COBS(header | payload | crc32) | 0x00.  COBS removes every zero
byte from the body, so a zero always means "frame boundary": a receiver that starts mid-frame or
sees line noise loses at most the frame it is in, then resynchronises at the next zero.
"""

import struct

try:
    from binascii import crc32 as _crc32_native
except ImportError:  # a MicroPython build without binascii.crc32
    _crc32_native = None

PROTOCOL_VERSION = 1
DELIMITER = 0
MAX_PAYLOAD = 240
_HEADER = "<BBBH"  # version, type, node id, sequence
HEADER_SIZE = 5
CRC_SIZE = 4
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1
NODE_BROADCAST = 255
NODE_SENSOR = 255  # sensor index meaning "the node itself" (in faults)
SEQ_MODULO = 65536

# Message types.
HELLO = 1
READING = 2
ALARM = 3
FAULT = 4
HEARTBEAT = 5
ACK = 6
COMMAND = 7

TYPE_NAMES = {
    HELLO: "hello",
    READING: "reading",
    ALARM: "alarm",
    FAULT: "fault",
    HEARTBEAT: "heartbeat",
    ACK: "ack",
    COMMAND: "command",
}
TYPE_CODES = {name: code for code, name in TYPE_NAMES.items()}

# Messages the node repeats until the gateway acknowledges them (and the gateway its commands).
ACKED_TYPES = (HELLO, ALARM, FAULT, COMMAND)

SENSOR_KINDS = {1: "smoke", 2: "heat", 3: "flame", 4: "call_point"}
ALARM_CAUSES = {1: "smoke", 2: "heat", 3: "heat_ror", 4: "flame", 5: "call_point"}
FAULT_CODES = {
    1: "open",  # sensor line open circuit (broken wire, head removed)
    2: "short",  # sensor line short circuit
    3: "range",  # reading outside what the sensor can physically report
    4: "config",  # node configuration rejected
    5: "internal",  # firmware error (caught exception, watchdog, ...)
}
COMMANDS = {1: "reset", 2: "silence", 3: "hello"}
ACK_STATUS = {0: "ok", 1: "unknown_command", 2: "rejected"}

SENSOR_KIND_CODES = {v: k for k, v in SENSOR_KINDS.items()}
ALARM_CAUSE_CODES = {v: k for k, v in ALARM_CAUSES.items()}
FAULT_CODE_CODES = {v: k for k, v in FAULT_CODES.items()}
COMMAND_CODES = {v: k for k, v in COMMANDS.items()}
ACK_STATUS_CODES = {v: k for k, v in ACK_STATUS.items()}

# Values travel as signed 32-bit integers in hundredths of the sensor's unit (degC, %).
VALUE_SCALE = 100


class ProtocolError(ValueError):
    pass


class FramingError(ProtocolError):
    """Bytes between two delimiters that are not a COBS frame of plausible size."""


class CrcError(ProtocolError):
    pass


class VersionError(ProtocolError):
    pass


class PayloadError(ProtocolError):
    """A frame with a good CRC whose payload this side does not understand."""


# --- CRC-32 (IEEE 802.3, as zlib/binascii) --------------------------------------------------


def crc32_soft(data, crc=0):
    """Bitwise CRC-32 for MicroPython builds without binascii.crc32; slow but tiny."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def crc32(data):
    if _crc32_native is None:
        return crc32_soft(data)
    return _crc32_native(data) & 0xFFFFFFFF


# --- COBS (Consistent Overhead Byte Stuffing) -----------------------------------------------


def cobs_encode(data):
    """Canonical COBS (Cheshire & Baker 1999): the result contains no zero byte."""
    out = bytearray(1)
    code_at = 0
    code = 1
    n = len(data)
    for i in range(n):
        byte = data[i]
        if byte:
            out.append(byte)
            code += 1
            if code < 0xFF or i + 1 == n:
                continue
        out[code_at] = code
        code = 1
        code_at = len(out)
        out.append(0)
    out[code_at] = code
    return bytes(out)


def cobs_decode(data):
    """Inverse of cobs_encode; raises FramingError on a zero byte or a block past the end."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FramingError("zero byte inside a COBS frame")
        end = i + code
        if end > n:
            raise FramingError("COBS block runs past the end of the frame")
        chunk = data[i + 1 : end]
        if 0 in chunk:
            raise FramingError("zero byte inside a COBS frame")
        out += chunk
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


# --- messages ---------------------------------------------------------------------------------


class Message:
    """One protocol message. `fields` holds the type's own data (see docs/node-protocol.md)."""

    def __init__(self, mtype, node, seq, fields=None, raw=None):
        self.type = mtype
        self.node = node
        self.seq = seq
        self.fields = fields if fields is not None else {}
        self.raw = raw  # the decoded (unstuffed) frame, CRC included, when received

    @property
    def type_name(self):
        return TYPE_NAMES.get(self.type, str(self.type))

    @property
    def needs_ack(self):
        return self.type in ACKED_TYPES

    def to_dict(self):
        out = {"type": self.type_name, "node": self.node, "seq": self.seq}
        for key in self.fields:
            out[key] = self.fields[key]
        return out

    def __eq__(self, other):
        return isinstance(other, Message) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"Message({self.to_dict()!r})"


def message_from_dict(obj):
    """The inverse of Message.to_dict (used by the test vectors)."""
    fields = {}
    for key in obj:
        if key not in ("type", "node", "seq"):
            fields[key] = obj[key]
    return Message(TYPE_CODES[obj["type"]], obj["node"], obj["seq"], fields)


def _pack_str(text):
    raw = text.encode()
    if len(raw) > 255:
        raise ProtocolError("string longer than 255 bytes")
    return struct.pack("<B", len(raw)) + raw


def _unpack_str(payload, at):
    if at >= len(payload):
        raise PayloadError("truncated string")
    size = payload[at]
    end = at + 1 + size
    if end > len(payload):
        raise PayloadError("truncated string")
    try:
        return str(payload[at + 1 : end], "utf-8"), end
    except UnicodeError:
        raise PayloadError("string is not UTF-8") from None


def _only_str(payload, at):
    """A string that must end the payload exactly."""
    text, end = _unpack_str(payload, at)
    if end != len(payload):
        raise PayloadError("trailing bytes after the payload")
    return text


def _code(table, name, what):
    if name not in table:
        raise ProtocolError(f"unknown {what} {name!r}")
    return table[name]


def _name(table, code, what):
    if code not in table:
        raise PayloadError(f"unknown {what} code {code}")
    return table[code]


def encode_payload(mtype, fields):
    f = fields
    if mtype == HELLO:
        out = struct.pack("<IH", f["boot_id"], f["heartbeat_s"]) + _pack_str(f["firmware"])
        sensors = f["sensors"]
        out += struct.pack("<B", len(sensors))
        for sensor in sensors:
            out += struct.pack("<B", _code(SENSOR_KIND_CODES, sensor[0], "sensor kind"))
            out += _pack_str(sensor[1])
        return out
    if mtype == READING:
        values = f["values"]
        out = struct.pack("<B", len(values))
        for item in values:
            out += struct.pack("<Bi", item[0], item[1])
        return out
    if mtype == ALARM:
        cause = _code(ALARM_CAUSE_CODES, f["cause"], "alarm cause")
        return struct.pack("<BBi", f["sensor"], cause, f["value"]) + _pack_str(f["name"])
    if mtype == FAULT:
        code = _code(FAULT_CODE_CODES, f["code"], "fault code")
        active = 1 if f["active"] else 0
        return struct.pack("<BBBi", f["sensor"], code, active, f["value"]) + _pack_str(f["name"])
    if mtype == HEARTBEAT:
        return struct.pack(
            "<IIIBH", f["uptime_s"], f["alarms"], f["faults"], f["flags"], f["crc_errors"]
        )
    if mtype == ACK:
        status = _code(ACK_STATUS_CODES, f["status"], "ack status")
        return struct.pack("<HB", f["acked"], status)
    if mtype == COMMAND:
        return struct.pack("<B", _code(COMMAND_CODES, f["command"], "command"))
    raise ProtocolError(f"unknown message type {mtype!r}")


def _fixed(payload, fmt, size):
    if len(payload) != size:
        raise PayloadError(f"payload is {len(payload)} bytes, expected {size}")
    return struct.unpack(fmt, payload)


def decode_payload(mtype, payload):
    if mtype == HELLO:
        if len(payload) < 6:
            raise PayloadError("truncated hello")
        boot_id, heartbeat_s = struct.unpack("<IH", payload[:6])
        firmware, at = _unpack_str(payload, 6)
        if at >= len(payload):
            raise PayloadError("truncated hello")
        count = payload[at]
        at += 1
        sensors = []
        for _ in range(count):
            if at >= len(payload):
                raise PayloadError("truncated sensor list")
            kind = _name(SENSOR_KINDS, payload[at], "sensor kind")
            name, at = _unpack_str(payload, at + 1)
            sensors.append([kind, name])
        if at != len(payload):
            raise PayloadError("trailing bytes after hello")
        return {
            "boot_id": boot_id,
            "heartbeat_s": heartbeat_s,
            "firmware": firmware,
            "sensors": sensors,
        }
    if mtype == READING:
        if not payload or len(payload) != 1 + 5 * payload[0]:
            raise PayloadError("reading payload length does not match its count")
        values = []
        for i in range(payload[0]):
            values.append(list(struct.unpack("<Bi", payload[1 + 5 * i : 6 + 5 * i])))
        return {"values": values}
    if mtype == ALARM:
        sensor, cause, value = _fixed(payload[:6], "<BBi", 6)
        name = _only_str(payload, 6)
        return {
            "sensor": sensor,
            "cause": _name(ALARM_CAUSES, cause, "alarm cause"),
            "value": value,
            "name": name,
        }
    if mtype == FAULT:
        sensor, code, active, value = _fixed(payload[:7], "<BBBi", 7)
        name = _only_str(payload, 7)
        if active > 1:
            raise PayloadError("fault active flag must be 0 or 1")
        return {
            "sensor": sensor,
            "code": _name(FAULT_CODES, code, "fault"),
            "active": active == 1,
            "value": value,
            "name": name,
        }
    if mtype == HEARTBEAT:
        uptime_s, alarms, faults, flags, crc_errors = _fixed(payload, "<IIIBH", 15)
        return {
            "uptime_s": uptime_s,
            "alarms": alarms,
            "faults": faults,
            "flags": flags,
            "crc_errors": crc_errors,
        }
    if mtype == ACK:
        acked, status = _fixed(payload, "<HB", 3)
        return {"acked": acked, "status": _name(ACK_STATUS, status, "ack status")}
    if mtype == COMMAND:
        (command,) = _fixed(payload, "<B", 1)
        return {"command": _name(COMMANDS, command, "command")}
    raise PayloadError(f"unknown message type {mtype}")


HEARTBEAT_FLAG_SILENCED = 1


def encode(message):
    """The bytes to put on the wire for one message, delimiters included."""
    payload = encode_payload(message.type, message.fields)
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = struct.pack(_HEADER, PROTOCOL_VERSION, message.type, message.node, message.seq)
    body += payload
    body += struct.pack("<I", crc32(body))
    return b"\x00" + cobs_encode(body) + b"\x00"


def decode_frame(encoded):
    """Decode one frame body (between delimiters). Raises ProtocolError with the reason."""
    body = cobs_decode(encoded)
    if len(body) < HEADER_SIZE + CRC_SIZE:
        raise FramingError(f"frame of {len(body)} bytes is too short")
    (crc,) = struct.unpack("<I", body[-CRC_SIZE:])
    if crc32(body[:-CRC_SIZE]) != crc:
        raise CrcError("CRC mismatch")
    version, mtype, node, seq = struct.unpack(_HEADER, body[:HEADER_SIZE])
    if version != PROTOCOL_VERSION:
        raise VersionError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    try:
        fields = decode_payload(mtype, body[HEADER_SIZE:-CRC_SIZE])
    except ProtocolError:
        raise
    except Exception as exc:  # struct.error on a short field, say
        raise PayloadError(f"bad payload: {exc}") from None
    return Message(mtype, node, seq, fields, body)


class Decoder:
    """Turns a byte stream into messages. Never raises on input: bad frames are counted.

    Counters: frames (good), crc_errors, framing_errors (bad COBS / too short), version_errors,
    payload_errors (good CRC but a payload this side does not understand), overruns (no
    delimiter within MAX_ENCODED bytes: the buffer is dropped until the next delimiter).
    """

    def __init__(self):
        self._buf = bytearray()
        self._skipping = False
        self.frames = 0
        self.crc_errors = 0
        self.framing_errors = 0
        self.version_errors = 0
        self.payload_errors = 0
        self.overruns = 0

    def counters(self):
        return {
            "frames": self.frames,
            "crc_errors": self.crc_errors,
            "framing_errors": self.framing_errors,
            "version_errors": self.version_errors,
            "payload_errors": self.payload_errors,
            "overruns": self.overruns,
        }

    def feed(self, data):
        """Feed received bytes; returns the list of messages completed by them."""
        if not isinstance(data, bytes):
            data = bytes(data)
        out = []
        start = 0
        n = len(data)
        while start < n:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:])
                break
            self._append(data[start:end])
            if not self._skipping and self._buf:
                message = self._frame(bytes(self._buf))
                if message is not None:
                    out.append(message)
            self._buf = bytearray()
            self._skipping = False
            start = end + 1
        return out

    def _append(self, chunk):
        if self._skipping:
            return
        self._buf += chunk
        if len(self._buf) > MAX_ENCODED:
            self.overruns += 1
            self._buf = bytearray()
            self._skipping = True

    def _frame(self, encoded):
        try:
            message = decode_frame(encoded)
        except CrcError:
            self.crc_errors += 1
            return None
        except VersionError:
            self.version_errors += 1
            return None
        except PayloadError:
            self.payload_errors += 1
            return None
        except Exception:  # FramingError, and anything else line noise might provoke
            self.framing_errors += 1
            return None
        self.frames += 1
        return message


class SequenceWindow:
    """Remembers the last `size` sequence numbers seen from one sender, to drop duplicates.

    A node repeats an unacknowledged alarm with the same sequence number; the receiver acks the
    repeat again but must not act on it twice.
    """

    def __init__(self, size=64):
        self.size = size
        self._seen = []

    def clear(self):
        self._seen = []

    def seen(self, seq):
        """True if `seq` was seen before; otherwise remembers it and returns False."""
        if seq in self._seen:
            return True
        self._seen.append(seq)
        if len(self._seen) > self.size:
            self._seen.pop(0)
        return False


def next_seq(seq):
    return (seq + 1) % SEQ_MODULO
