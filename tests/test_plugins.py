"""Pipeline plugins and model families (edge/plugins.py, edge/vision/families.py, docs/plugins.md).

The third-party plugins here are real distributions: a `*.dist-info` with `entry_points.txt` in a
temporary directory on PYTHONPATH of a subprocess, found by importlib.metadata as pip-installed
ones are. Nothing patches the registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge import config as config_mod
from edge import plugins
from edge.config import ConfigError
from tests.harness import Watcher, gateway_config_text, write_config

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "edge" / "models"
FRAME = ROOT / "tests" / "data" / "vtest_frames" / "0580.jpg"

GATEWAY = """\
[gateway]
id = "gw-1"
district = "d01"
ward = "w01"

[outbox]
path = "{outbox}"
"""

BEEPER = '''\
"""A third-party pipeline plugin: section [beeper], a reading every interval_s."""
from pydantic import Field

from edge.confbase import Section
from edge.plugins import PipelinePlugin


class BeeperSection(Section):
    interval_s: float = Field(1.0, gt=0, le=60)
    sources: list[str] = Field(default_factory=list)


PLUGIN = PipelinePlugin(
    model="wg_beeper:BeeperSection",
    build="wg_beeper.pipes:build",
    active=lambda section: bool(section.sources),
)
'''

BEEPER_PIPES = """\
import threading

from edge.pipeline import Pipeline
from protocol.events import Kind


class Beeper(Pipeline):
    def __init__(self, ctx, source, interval_s):
        super().__init__(f"beeper-{source}", ctx)
        self.source, self.interval_s, self.sent = source, interval_s, 0

    def run(self, stop: threading.Event) -> None:
        self.set_state("ok")
        while not stop.wait(self.interval_s):
            self.sent += 1
            self.ctx.emit(Kind.READING, f"beep/{self.source}", {"value": self.sent})


def build(ctx):
    section = ctx.config.beeper
    return [Beeper(ctx, s, section.interval_s) for s in section.sources]
"""

BROKEN = """\
import wg_vendor_sdk_not_installed  # noqa: F401
"""


def dist(site: Path, name: str, entry_points: dict[str, str], files: dict[str, str]) -> None:
    """A minimal installed distribution: what pip leaves in site-packages."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"  # as pip names it
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = ["[wardgate.pipelines]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def site(tmp_path) -> Path:
    site = tmp_path / "site"
    dist(
        site,
        "wg-beeper",
        {"beeper": "wg_beeper:PLUGIN"},
        {"wg_beeper/__init__.py": BEEPER, "wg_beeper/pipes.py": BEEPER_PIPES},
    )
    dist(site, "wg-broken", {"broken": "wg_broken:PLUGIN"}, {"wg_broken.py": BROKEN})
    return site


def run_py(code: str, site: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site)])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_builtin_plugins_are_registered_without_importing_them():
    registry = plugins.registry()
    assert {"serial", "vision"} <= set(registry)
    assert registry["vision"].target == "edge.vision.plugin:PLUGIN"
    assert set(registry).isdisjoint(plugins.CORE_SECTIONS)
    fields = config_mod.config_model().model_fields
    assert {"gateway", "uplink", "serial", "vision"} <= set(fields)


def test_core_config_module_imports_no_plugin():
    result = run_py(
        """
        import sys
        import edge.config
        print(sorted(m for m in sys.modules if m.startswith(("edge.vision", "sensor_drivers"))))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


LAZY = """
import sys
from pathlib import Path
from edge import config
from edge.runtime import Gateway

cfg = config.load(Path({path!r}))
assert "edge.vision.config" in sys.modules  # the section model: pydantic only
heavy = ("numpy", "cv2", "ai_edge_litert", "pymodbus")
before = sorted(m for m in heavy if m in sys.modules)
gw = Gateway(cfg, None)
names = [p.name for p in gw.build_pipelines()]
after = sorted(m for m in heavy if m in sys.modules)
print(before, after, names)
"""


def test_vision_stack_loads_only_when_a_camera_is_enabled(tmp_path):
    base = GATEWAY.format(outbox=tmp_path / "outbox.sqlite3")
    clip = ROOT / "tests" / "data" / "vtest_walk_2s.mp4"
    camera = f'\n[[vision.cameras]]\nname = "lobby"\nfile = "{clip}"\n'
    off = camera + "enabled = false\n"
    for name, text, heavy in (
        ("none", base, False),
        ("off", base + off, False),
        ("on", base + camera, True),
    ):
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        result = run_py(LAZY.format(path=str(path)))
        assert result.returncode == 0, result.stderr
        before, after, pipes = result.stdout.strip().split("] ", 2)
        assert before == "[", (name, result.stdout)  # nothing heavy to validate the config
        if heavy:
            assert "'cv2'" in after and "'numpy'" in after, result.stdout
            assert "cam-lobby" in pipes
        else:
            assert after == "[", (name, result.stdout)
            assert "cam-" not in pipes


def test_unknown_section_is_an_unknown_key(tmp_path):
    text = GATEWAY.format(outbox=tmp_path / "o.sqlite3") + "\n[beeper]\ninterval_s = 1\n"
    with pytest.raises(ConfigError) as err:
        config_mod.parse(text, "site.toml")
    assert err.value.problems == [
        "site.toml:9: beeper: unknown key (check its spelling against docs/config.md)"
    ]


CHECK = """
from edge import config
try:
    cfg = config.load({path!r})
    print("ok", cfg.beeper)
except config.ConfigError as exc:
    print("\\n".join(exc.problems))
"""


def test_third_party_section_validates_with_file_and_line(tmp_path, site):
    base = GATEWAY.format(outbox=tmp_path / "o.sqlite3")
    good = tmp_path / "good.toml"
    good.write_text(base + '\n[beeper]\ninterval_s = 0.5\nsources = ["a"]\n')
    result = run_py(CHECK.format(path=str(good)), site)
    assert result.stdout.startswith("ok interval_s=0.5 sources=['a']"), result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(base + "\n[beeper]\ninterval_s = 0.5\nvolume = 11\n")
    result = run_py(CHECK.format(path=str(bad)), site)
    assert result.stdout.strip() == (
        f"{bad}:11: beeper.volume: unknown key (check its spelling against docs/config.md)"
    ), result.stderr


def test_plugin_that_cannot_import_names_the_package(tmp_path, site):
    base = GATEWAY.format(outbox=tmp_path / "o.sqlite3")
    unused = tmp_path / "unused.toml"
    unused.write_text(base)  # a broken plugin the config does not use stops nothing
    result = run_py(CHECK.format(path=str(unused)), site)
    assert result.stdout.startswith("ok"), result.stdout + result.stderr
    used = tmp_path / "used.toml"
    used.write_text(base + "\n[broken]\nx = 1\n")
    result = run_py(CHECK.format(path=str(used)), site)
    problem = result.stdout.strip()
    assert problem.startswith(f"{used}:9: broken: pipeline plugin [broken]"), problem
    assert "'wg-broken'" in problem and "wg_vendor_sdk_not_installed" in problem
    assert "install" in problem


def test_third_party_pipeline_runs_in_a_real_gateway(tmp_path, site, broker):
    from tests.harness import GatewayProcess

    text = gateway_config_text(broker, tmp_path)
    text += '\n[beeper]\ninterval_s = 0.2\nsources = ["b1"]\n'
    watcher = Watcher(broker)
    gw = GatewayProcess(
        write_config(tmp_path, text), env={"PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    ).start()
    try:
        watcher.wait_for(
            lambda: len([e for e in watcher.events("reading") if e.source == "beep/b1"]) >= 3,
            what="3 beeper readings",
        )
    finally:
        assert gw.terminate() == 0, gw.log()
        watcher.stop()
    values = [e.data["value"] for e in watcher.events("reading") if e.source == "beep/b1"]
    assert values[:3] == [1, 2, 3]


# --- model families -------------------------------------------------------------------------


def test_every_shipped_model_declares_its_family():
    from edge.vision.families import families, read_metadata

    models = sorted(MODELS.glob("*.tflite"))
    assert len(models) == 3
    for model in models:
        meta = json.loads(model.with_suffix(".json").read_text())
        assert meta["family"] in families(), model.name
        for key in ("card", "license", "provenance"):
            assert key in meta, (model.name, key)
        assert (MODELS / meta["card"]).is_file()
        assert read_metadata(model).threshold is not None
    assert read_metadata(MODELS / "nanodet_g416_person_int8.tflite").family == "nanodet"
    assert read_metadata(MODELS / "ssdlite_mnv2_person_int8.tflite").family == "ssd"


def test_detector_source_no_longer_sniffs_the_op_list():
    source = (ROOT / "edge" / "vision" / "detector.py").read_text()
    assert "_get_ops_details" not in source and "_detect_family" not in source


@pytest.mark.parametrize(
    "stem,family", [("nanodet_g416_person_int8", "nanodet"), ("ssdlite_mnv2_person_int8", "ssd")]
)
def test_model_without_metadata_needs_a_family(tmp_path, stem, family):
    import cv2

    from edge.vision.detector import FamilyUnknown, PersonDetector

    mine = tmp_path / "my-model.tflite"
    shutil.copyfile(MODELS / f"{stem}.tflite", mine)
    with pytest.raises(FamilyUnknown, match="my-model.json.*declares the model's family"):
        PersonDetector(str(mine))
    image = cv2.imread(str(FRAME))
    shipped = PersonDetector(stem)
    given = PersonDetector(str(mine), family=family, threshold=shipped.threshold)
    expected = shipped.detect(image)
    assert expected
    assert given.detect(image) == expected


def test_config_asks_for_model_family_of_a_model_without_metadata(tmp_path):
    mine = tmp_path / "site-model.tflite"
    shutil.copyfile(MODELS / "nanodet_g416_person_int8.tflite", mine)
    base = GATEWAY.format(outbox=tmp_path / "o.sqlite3")
    camera = f'\n[[vision.cameras]]\nname = "gate"\nurl = "rtsp://192.0.2.1/s"\nmodel = "{mine}"\n'
    with pytest.raises(ConfigError) as err:
        config_mod.parse(base + camera, "c.toml")
    (problem,) = err.value.problems
    assert problem.startswith("c.toml: vision: camera 'gate': model site-model.tflite: no metadata")
    assert "site-model.json" in problem and "model_family" in problem and "nanodet" in problem
    cfg = config_mod.parse(base + camera + 'model_family = "nanodet"\n', "c.toml")
    assert cfg.vision.cameras[0].model_family == "nanodet"
    cfg = config_mod.parse(
        base + '[vision]\nmodel_family = "nanodet"\n' + camera.replace("\n[[", "[[", 1), "c.toml"
    )
    assert cfg.vision.model_family == "nanodet"
    with pytest.raises(ConfigError, match="unknown model family 'yolo'"):
        config_mod.parse(base + camera + 'model_family = "yolo"\n', "c.toml")
    shipped = camera.replace(str(mine), "fast") + 'model_family = "nanodet"\n'
    with pytest.raises(ConfigError, match="declares family 'ssd', the config says 'nanodet'"):
        config_mod.parse(base + shipped, "c.toml")


def test_detect_cli_family_option(tmp_path):
    mine = tmp_path / "mine.tflite"
    shutil.copyfile(MODELS / "ssdlite_mnv2_person_int8.tflite", mine)

    def detect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "edge.cli", "detect", "--json", *args, str(FRAME)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    missing = detect("--model", str(mine))
    assert missing.returncode == 2 and "declares the model's family" in missing.stderr
    assert "Traceback" not in missing.stderr
    given = detect("--model", str(mine), "--family", "ssd", "--threshold", "0.4")
    shipped = detect("--model", "fast")
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)["detections"] == json.loads(shipped.stdout)["detections"]


def test_plugin_sections_layer_inherit_and_reload_like_the_core_ones(tmp_path):
    """The registry's sections go through conf.d layering, camera inheritance (the vision
    plugin's own model) and the reload metadata; the family check sees the merged, inherited
    values."""
    mine = tmp_path / "site-model.tflite"
    shutil.copyfile(MODELS / "nanodet_g416_person_int8.tflite", mine)
    path = tmp_path / "config.toml"
    path.write_text(
        GATEWAY.format(outbox=tmp_path / "o.sqlite3")
        + f'\n[[vision.cameras]]\nname = "gate"\nurl = "rtsp://192.0.2.1/s"\nmodel = "{mine}"\n'
    )
    with pytest.raises(ConfigError, match="no metadata .* declares its family"):
        config_mod.load(path)
    drop_ins = tmp_path / "conf.d"
    drop_ins.mkdir()
    # [vision.person] is a camera default: the camera inherits enabled = false, so its model
    # is never run and needs no family
    (drop_ins / "10-no-person.toml").write_text("[vision.person]\nenabled = false\n")
    cfg = config_mod.load(path)
    assert cfg.vision.cameras[0].person.enabled is False
    (drop_ins / "10-no-person.toml").unlink()
    (drop_ins / "20-family.toml").write_text('[vision]\nmodel_family = "nanodet"\nfps = 2\n')
    cfg = config_mod.load(path)
    assert cfg.vision.model_family == "nanodet" and cfg.vision.cameras[0].fps == 2
    shown = config_mod.effective_lines(cfg, config_mod.check(path, files=False).origins)
    assert (
        f"vision.cameras[0].fps = 2.0    # {drop_ins}/20-family.toml:3 (inherited from vision.fps)"
        in shown
    )
    assert {"serial", "vision"} <= set(config_mod.section_names())
    assert "| `[vision]` |" in config_mod.reload_table()
    changed = cfg.model_copy(update={"vision": cfg.vision.model_copy(update={"fps": 3.0})})
    applied, refused, _ = config_mod.reload_plan(cfg, changed)
    assert applied == ["vision"] and refused == []
