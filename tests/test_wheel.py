"""The wheel holds every file the code reads at run time (grids, collection profiles, the demo recipe, and what
later stages add): the commands run from the source tree with an audit hook recording each file they open, and
each file opened from the checkout must be in the wheel, byte for byte. Installing the wheel is CI's part
(tests/install/check_wheel.sh); building it takes a second."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs the commands users run, in-process, and prints every file they opened.
DRIVER = """
import json, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(args[0]) if event == "open" and isinstance(args[0], str) else None)
from eo_etl.cli import app
from eo_etl.demo import demo_recipe_path
commands = [
    ["validate", str(demo_recipe_path())],
    ["validate", sys.argv[1]],  # an unknown collection: the error lists every profile
    ["plan", str(demo_recipe_path()), "--out", sys.argv[2]],
    ["grid", "cell", "454U_120R"],
]
for command in commands:
    try:
        app(command, standalone_mode=False)
    except SystemExit:
        pass
print(json.dumps(opened))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    folder = tmp_path_factory.mktemp("wheel")
    build = "import sys; from hatchling.build import build_wheel; print(build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", build, str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return zipfile.ZipFile(folder / done.stdout.split()[-1])


def opened_at_run_time(tmp_path: Path) -> set[str]:
    """Files under the checkout (not Python modules) that the commands open, relative to it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "pipelines" / "demo.yaml").read_text().replace("sentinel-2-l2a", "no-such-collection"))
    args = [str(bad), str(tmp_path / "plan.parquet")]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found = set()
    for name in json.loads(done.stdout.strip().splitlines()[-1]):
        path = Path(name).resolve()
        if path.is_relative_to(ROOT) and path.suffix not in (".py", ".pyc") and path.is_file():
            found.add(path.relative_to(ROOT).as_posix())
    # Only the project's own files: not the virtual environment or the demo catalogue written under out/.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    found &= set(tracked.splitlines())
    return found


def in_wheel(path: str) -> str | None:
    """Where the wheel holds a checkout's file: the package as it is, plus pyproject's force-include."""
    if path.startswith("eo_etl/"):
        return path
    wheel_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    for source, target in wheel_config.get("force-include", {}).items():
        if path == source or path.startswith(source + "/"):
            return target + path.removeprefix(source)
    return None


def test_every_file_the_code_opens_from_the_checkout_is_in_the_wheel(wheel, tmp_path):
    opened = opened_at_run_time(tmp_path)
    profiles = {p.relative_to(ROOT).as_posix() for p in (ROOT / "eo_etl" / "sources" / "profiles").glob("*.yaml")}
    assert {"grids/majortom.yaml", "pipelines/demo.yaml"} | profiles <= opened, opened  # the hook sees them
    names = set(wheel.namelist())
    for path in sorted(opened):
        target = in_wheel(path)
        assert target in names, f"the code opens {path}, which the wheel does not hold (as {target})"
        assert wheel.read(target) == (ROOT / path).read_bytes(), path


def test_the_wheel_has_the_package_its_console_script_and_the_extras(wheel):
    names = wheel.namelist()
    python = {n for n in names if n.endswith(".py")}
    assert python == {p.relative_to(ROOT).as_posix() for p in (ROOT / "eo_etl").rglob("*.py")}
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = wheel.read(info).decode()
    for extra in ("demo", "taco", "video", "gee", "s3", "gcs", "dataflow", "torch", "all"):
        assert f"Provides-Extra: {extra}\n" in metadata, extra
    entry_points = wheel.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "eo-etl = eo_etl.cli:app" in entry_points
