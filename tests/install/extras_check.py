"""Run by check_wheel.sh with the Python of a virtual environment that holds the eo-etl wheel, in an empty folder
outside the checkout. ``missing``: no extra is installed, so every recipe setting that needs one fails
validation (and plan, and build) with one line naming the field and the command, exit 2, nothing written;
a build's --out / --runner are checked too; the demo and the torch reader say which extra they need; every
module that is not an extra's own imports. ``installed``: after ``[all]``, the same recipes are valid.

    python extras_check.py missing|installed
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import yaml

EO_ETL = str(Path(sys.executable).with_name("eo-etl"))
HERE = Path.cwd()
BASE = {
    "name": "extras",
    "aoi": {"bbox": [14.0, 40.5, 14.1, 40.6]},
    "time": {"start": "2023-06-01", "end": "2023-06-30"},
    "sources": [{"collection": "sentinel-2-l2a", "url": "http://127.0.0.1:9/stac", "bands": ["B04"]}],
    "outputs": {"path": "out/extras"},
}
GEE = {"kind": "gee", "collection": "COPERNICUS/S2_SR_HARMONIZED", "profile": "sentinel-2-l2a", "bands": ["B04"]}
DATAFLOW = ["--option", "project=p", "--option", "region=europe-west4", "--option", "temp_location=gs://b/tmp"]


def pip(extra: str) -> str:
    return f'pip install "eo-etl[{extra}]"'


# A recipe setting that needs an extra → the one line that says so.
CASES = [
    ({"outputs": {"formats": ["zarr", "taco"]}}, f"outputs.formats: 'taco' needs the taco extra: {pip('taco')}"),
    ({"outputs": {"formats": ["zarr", "video"]}}, f"outputs.formats: 'video' needs the video extra: {pip('video')}"),
    ({"sources": [GEE]}, f"sources[0].kind: 'gee' needs the gee extra: {pip('gee')}"),
    ({"outputs": {"path": "s3://bucket/x"}}, f"outputs.path: 's3://bucket/x' needs the s3 extra: {pip('s3')}"),
    ({"captions": {"kind": "template"}}, f"captions.place: True needs the captions extra: {pip('captions')}"),
    ({"outputs": {"path": "gs://bucket/x"}}, f"outputs.path: 'gs://bucket/x' needs the gcs extra: {pip('gcs')}"),
    (
        {"runner": {"kind": "dataflow"}, "outputs": {"path": "gs://bucket/x"}},
        f"outputs.path: 'gs://bucket/x' needs the gcs extra: {pip('gcs')}\n"
        f"runner.kind: 'dataflow' needs the dataflow extra: {pip('dataflow')}",
    ),
]
OWN_MODULES = {"eo_etl.store.taco", "eo_etl.store.video", "eo_etl.store.torch_dataset"}  # an extra's own code


def recipe(name: str, change: dict) -> Path:
    path = HERE / name
    path.write_text(yaml.safe_dump(BASE | change))
    return path


def command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EO_ETL, *args], cwd=HERE, capture_output=True, text=True, timeout=300)


def files() -> set[Path]:
    return set(HERE.rglob("*"))


def refused(result: subprocess.CompletedProcess, lines: list[str], what: str) -> None:
    """Exit 2, exactly these lines on stderr (each after ``error: ``), no traceback."""
    got = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"{what}: exit {result.returncode}\n{result.stderr}"
    assert got == [f"error: {line}" for line in lines], f"{what}:\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr, what


def missing() -> None:
    import eo_etl

    assert "site-packages" in eo_etl.__file__, f"eo_etl comes from {eo_etl.__file__}, not the installed wheel"
    for i, (change, lines) in enumerate(CASES):
        path = recipe(f"r{i}.yaml", change)
        before = files()
        for name in ("validate", "plan", "build"):
            result = command(name, path.name, *(DATAFLOW if name == "build" else ()))
            refused(result, [f"{path.name}: {line}" for line in lines.splitlines()], f"{name} {path.name}")
            assert files() == before, f"{name} {path.name} wrote {files() - before}"
        print(f"ok  {path.name}: {lines.splitlines()[0]}")

    # A build's own --out and --runner are checked before it starts.
    ok = recipe("ok.yaml", {})
    assert command("validate", ok.name).returncode == 0
    before = files()
    refused(
        command("build", ok.name, "--out", "gs://bucket/y"),
        [f"--out: 'gs://bucket/y' needs the gcs extra: {pip('gcs')}"],
        "build --out gs://",
    )
    refused(
        command("build", ok.name, "--out", "s3://bucket/y", "--runner", "dataflow", *DATAFLOW),
        [
            f"--out: 's3://bucket/y' needs the s3 extra: {pip('s3')}",
            f"--runner: 'dataflow' needs the dataflow extra: {pip('dataflow')}",
        ],
        "build --runner dataflow",
    )
    refused(command("demo", "--out", "demo"), [f"eo-etl demo needs the demo extra: {pip('demo')}"], "eo-etl demo")
    demo = subprocess.run([sys.executable, "-m", "eo_etl.demo", "catalog"], capture_output=True, text=True)
    refused(demo, [f"python -m eo_etl.demo needs the demo extra: {pip('demo')}"], "python -m eo_etl.demo")
    assert files() == before, f"wrote {files() - before}"
    print("ok  build --out / --runner, eo-etl demo, python -m eo_etl.demo")

    reader = subprocess.run([sys.executable, "-c", "import eo_etl.store.torch_dataset"], capture_output=True, text=True)
    last = reader.stderr.strip().splitlines()[-1]
    assert reader.returncode == 1 and last.endswith(f"eo_etl.store.torch_dataset needs the torch extra: {pip('torch')}")
    print("ok  eo_etl.store.torch_dataset names the torch extra")

    modules = [m.name for m in pkgutil.walk_packages(eo_etl.__path__, "eo_etl.") if m.name not in OWN_MODULES]
    for name in modules:
        importlib.import_module(name)  # an optional package imported at module level would fail here
    print(f"ok  {len(modules)} modules import without any extra")


def installed() -> None:
    for i, (change, _) in enumerate(CASES):
        path = recipe(f"r{i}.yaml", change)
        result = command("validate", path.name)
        assert result.returncode == 0, f"validate {path.name} with every extra:\n{result.stderr}"
    print(f"ok  {len(CASES)} recipes that need an extra are valid with [all]")


if __name__ == "__main__":
    {"missing": missing, "installed": installed}[sys.argv[1]]()
