"""Checks node_protocol against the test vectors; runs under MicroPython and CPython alike.

On a board: `mpremote cp node_vectors.json : + run check_vectors.py`; in tests it runs under the
MicroPython unix port. Prints one line per failure and a closing 'N passed, N failed' line.
"""

import json
import sys

try:
    import node_protocol as np
except ImportError:
    from protocol import node_protocol as np

try:
    from binascii import hexlify, unhexlify
except ImportError:
    from ubinascii import hexlify, unhexlify


def _hex(data):
    return str(hexlify(data), "ascii")


def _error_kind(exc):
    if isinstance(exc, np.CrcError):
        return "crc"
    if isinstance(exc, np.VersionError):
        return "version"
    if isinstance(exc, np.PayloadError):
        return "payload"
    if isinstance(exc, np.FramingError):
        return "framing"
    return type(exc).__name__


def check(vectors):
    passed = 0
    failures = []

    def expect(ok, what):
        nonlocal passed
        if ok:
            passed += 1
        else:
            failures.append(what)

    expect(vectors["protocol_version"] == np.PROTOCOL_VERSION, "protocol version")
    for v in vectors["crc32"]:
        data = unhexlify(v["data_hex"])
        expect(np.crc32(data) == v["crc"], "crc32 " + v["data_hex"][:20])
        expect(np.crc32_soft(data) == v["crc"], "crc32_soft " + v["data_hex"][:20])
    for v in vectors["cobs"]:
        data, enc = unhexlify(v["data_hex"]), unhexlify(v["encoded_hex"])
        expect(np.cobs_encode(data) == enc, "cobs encode " + v["data_hex"][:20])
        expect(np.cobs_decode(enc) == data, "cobs decode " + v["encoded_hex"][:20])
    for v in vectors["messages"]:
        msg = np.message_from_dict(v["message"])
        frame = np.encode(msg)
        expect(_hex(frame) == v["frame_hex"], "encode {!r}".format(v["message"]))
        got = np.Decoder().feed(unhexlify(v["frame_hex"]))
        expect(
            len(got) == 1 and got[0].to_dict() == v["message"], "decode {!r}".format(v["message"])
        )
    for v in vectors["rejects"]:
        try:
            np.decode_frame(unhexlify(v["frame_hex"]))
            kind = None
        except Exception as exc:
            kind = _error_kind(exc)
        expect(kind == v["error"], "reject {}: got {!r}".format(v["why"], kind))
    for v in vectors["streams"]:
        decoder = np.Decoder()
        stream = unhexlify(v["stream_hex"])
        got = []
        for i in range(0, len(stream), 7):  # fed in pieces, as a UART delivers it
            got += [m.to_dict() for m in decoder.feed(stream[i : i + 7])]
        expect(got == v["messages"], "stream {}: messages".format(v["why"]))
        counters = decoder.counters()
        for key in v["counters"]:
            expect(counters[key] == v["counters"][key], "stream {}: {}".format(v["why"], key))
    return passed, failures


def main(path):
    with open(path) as f:
        vectors = json.load(f)
    passed, failures = check(vectors)
    for what in failures:
        print("FAIL", what)
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "node_vectors.json"))
