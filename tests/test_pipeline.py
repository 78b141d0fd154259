"""Builds through the Beam pipeline (the multi-process DirectRunner, two worker processes) against a real
STAC API (`rustac serve`) and COGs served over HTTP on loopback: what lands in the dataset, the counters,
resuming a killed build, transient read failures, and new versions over later time windows."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tacoreader
import yaml
import zarr

from eo_etl.build import build
from eo_etl.demo import sentinel2_item
from eo_etl.plan import plan
from eo_etl.recipe import load_recipe
from eo_etl.sample import OK
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from tests.imagery import write_item_collection
from tests.servers import Faults, file_server, free_port, stac_api

ROOT = Path(__file__).resolve().parents[1]
EO_ETL = str(Path(sys.executable).parent / "eo-etl")
MARCH, SEPTEMBER = datetime(2019, 3, 15, 14, 17, 29, tzinfo=UTC), datetime(2019, 9, 11, 14, 17, 31, tzinfo=UTC)
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12", "SCL"]


@pytest.fixture
def archive(tmp_path):
    """Two passes over the demo scene (March and September) as COGs on an HTTP server, in a STAC API;
    yields (api url, the server's faults, a folder for recipes and datasets)."""
    faults = Faults()
    with file_server(tmp_path / "cogs", faults) as files:
        items = [
            sentinel2_item(tmp_path / "cogs", f"S2B_{when:%Y%m%d}_demo", when, href_base=files)
            for when in (MARCH, SEPTEMBER)
        ]
        with stac_api(write_item_collection(tmp_path / "items.json", items)) as api:
            yield api, faults, tmp_path


def write_recipe(
    folder: Path, api: str, *, end="2019-06-30", workers=2, threads=2, outputs: dict | None = None, **changes
) -> Path:
    """The demo recipe over ``api``, into ``folder/demo`` (zarr and video, 4 a shard); ``outputs`` are changed
    key by key, other ``changes`` replace whole sections."""
    data = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    data["sources"] = [{"name": "s2l2a", "kind": "stac", "url": api, "collection": "sentinel-2-l2a", "bands": BANDS,
                        "resolution_m": 10, "resampling": "bilinear", "max_cloud": 20, "patch_size": 64}]  # fmt: skip
    data["time"] = {"start": "2019-01-01", "end": end}
    data["outputs"] = {"path": str(folder / "demo"), "formats": ["zarr", "video"], "shard_size": 4} | (outputs or {})
    data["runner"] = {"kind": "direct", "workers": workers, "threads": threads}
    data |= changes
    path = folder / f"recipe-{len(list(folder.glob('recipe-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def stored_pixels(root: Path) -> dict[str, np.ndarray]:
    """Cell → pixels, as the index says where they are."""
    index = pd.read_parquet(root / "index.parquet")
    pixels = zarr.open_group(str(root / "pixels.zarr"), mode="r")["s2l2a/pixels"]
    return {row.grid_cell: pixels[int(row.zarr_index)] for row in index[index.status == OK].itertuples()}


def file_digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_beam_build_stores_what_a_plain_loop_cuts_with_its_counters(archive):
    api, _, folder = archive
    recipe = load_recipe(write_recipe(folder, api))
    report = build(recipe)
    index = pd.read_parquet(report.output / "index.parquet")
    plain = {s.cell: s for s in acquire_source(recipe, recipe.sources[0], cells_of(recipe, plan(recipe)))}

    assert sorted(index.grid_cell) == sorted(plain) and len(index) == 12  # one row per cell, no repeats
    assert set(index.status) == {OK} and set(index.product_id) == {"S2B_20190315_demo"}
    assert sorted(index.zarr_index) == list(range(12))
    for cell, pixels in stored_pixels(report.output).items():
        np.testing.assert_array_equal(pixels, plain[cell].pixels)
    store = zarr.open_group(str(report.output / "pixels.zarr"), mode="r")["s2l2a"]
    assert sorted(store["sample"][:]) == sorted(plain)
    # statistics merged from the shards written by two processes equal those of all pixels at once
    b02 = np.stack([s.pixels[0] for s in plain.values()]).ravel()
    statistics = store.attrs["band_statistics"]["B02"]
    assert statistics["count"] == int((b02 != 0).sum()) and statistics["mean"] == pytest.approx(b02[b02 != 0].mean())

    m = report.metrics
    assert m["cells planned"] == 12 and m["samples ok"] == 12 and m["samples written"] == 12
    assert m["shards written"] == 3 and m["retries"] == 0 and m["cells already finished"] == 0
    assert m["pixel bytes staged"] == 12 * 7 * 64 * 64 * 2
    assert m["shard bytes written"] == sum(p.stat().st_size for p in (report.output / "pixels.zarr").rglob("c/*/0/0/0"))
    assert report.version == 1 and [v["samples"] for v in report.versions] == [12]


def test_a_rejected_cell_is_counted_by_its_reason(archive):
    api, _, folder = archive
    report = build(load_recipe(write_recipe(folder, api, time={"start": "2019-04-01", "end": "2019-06-30"})))
    index = pd.read_parquet(report.output / "index.parquet")
    assert set(index.status) == {"rejected"} and len(index) == 12
    assert report.metrics["rejected: no scene over the cell in the time window"] == 12
    assert not (report.output / "pixels.zarr" / "s2l2a").exists()


def test_a_killed_build_resumes_to_the_same_dataset_without_duplicates(archive):
    api, faults, folder = archive
    build(load_recipe(write_recipe(folder, api, outputs={"path": str(folder / "whole")})))  # uninterrupted, elsewhere

    faults.delay_s = 0.05  # a slow network, so that the build is still cutting cells when it is killed
    recipe = write_recipe(folder, api, workers=2, threads=1)
    out = folder / "demo"
    process = subprocess.Popen([EO_ETL, "build", str(recipe)], cwd=folder, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    samples = out / "_build" / "versions" / "0001" / "samples" / "s2l2a"
    deadline = time.monotonic() + 120
    while len(list(samples.glob("*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes
    process.wait()
    finished = len(list(samples.glob("*.json")))
    assert 3 <= finished < 12 and not (out / "index.parquet").exists()
    assert json.loads((out / "_build.lock").read_text())["pid"] == process.pid  # its lock is left, stale

    faults.delay_s = 0.0
    resumed = subprocess.run([EO_ETL, "build", str(recipe)], cwd=folder, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({finished} finished before)" in resumed.stdout

    first, again = pd.read_parquet(folder / "whole" / "index.parquet"), pd.read_parquet(out / "index.parquet")
    pd.testing.assert_frame_equal(first, again)
    assert not again.duplicated(["grid_cell", "source"]).any()
    reference, rebuilt = stored_pixels(folder / "whole"), stored_pixels(out)
    assert reference.keys() == rebuilt.keys() and len(rebuilt) == 12
    for cell in reference:
        assert hashlib.sha256(reference[cell]).digest() == hashlib.sha256(rebuilt[cell]).digest()
    assert file_digests(folder / "whole" / "pixels.zarr") == file_digests(out / "pixels.zarr")
    assert file_digests(folder / "whole" / "video") == file_digests(out / "video")
    assert not list(out.rglob("*.partial")) and not (out / "_build.lock").exists()


def test_transient_asset_failures_cost_retries_not_samples(archive):
    api, faults, folder = archive
    for band in ("B02", "B04", "B11", "SCL"):
        faults.plan(f"/S2B_20190315_demo/{band}.tif", 503, 429)
    report = build(load_recipe(write_recipe(folder, api)))
    assert sum(len(statuses) for statuses in faults.sent.values()) == 8
    # every faulted file cost retries (one GDAL open may meet two faults before it gives up, so not one each)
    assert report.metrics["retries"] >= len(faults.sent) == 4
    index = pd.read_parquet(report.output / "index.parquet")
    assert set(index.status) == {OK} and len(index) == 12 and report.metrics["samples written"] == 12


def test_a_later_window_appends_a_version_without_rewriting_full_shards(archive):
    api, _, folder = archive
    recipe = load_recipe(write_recipe(folder, api, outputs={"formats": ["zarr", "video", "taco"], "shard_size": 5}))
    first = build(recipe)
    out = first.output
    shards = out / "pixels.zarr" / "s2l2a" / "pixels" / "c"
    before = {k: (shards / str(k) / "0/0/0").stat() for k in range(3)}  # 5 + 5 + 2 samples

    second = build(recipe, since="LAST", until=date(2019, 12, 31))
    assert second.version == 2
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == 24 and set(index.status) == {OK}
    assert index.groupby("version").product_id.unique().map(list).to_dict() == {
        1: ["S2B_20190315_demo"],
        2: ["S2B_20190911_demo"],
    }
    assert sorted(index.zarr_index) == list(range(24))
    for k in (0, 1):  # the full shards of version 1 are the same files, untouched
        after = (shards / str(k) / "0/0/0").stat()
        assert (after.st_ino, after.st_mtime_ns) == (before[k].st_ino, before[k].st_mtime_ns)
    assert second.metrics["shards already written"] == 2 and second.metrics["shards written"] == 3
    versions = [(v["version"], v["start"][:10], v["end"][:10], v["samples"]) for v in second.versions]
    assert versions == [(1, "2019-01-01", "2019-07-01", 12), (2, "2019-07-01", "2020-01-01", 12)]
    # version 1's samples read back as they were; version 2's pixels are the same scene's
    pixels = zarr.open_group(str(out / "pixels.zarr"), mode="r")["s2l2a/pixels"]
    for row in index.itertuples():
        np.testing.assert_array_equal(
            pixels[row.zarr_index],
            pixels[index.zarr_index[(index.grid_cell == row.grid_cell) & (index.version == 1)].item()],
        )
    # the TACO holds both acquisitions of each cell, each by its sample_id (its window's start tells them apart)
    ids = {row["id"] for row in tacoreader.load(str(out / "taco" / "s2l2a")).data.to_arrow().to_pylist()}
    assert ids == set(index.sample_id) and {sid.split(".")[2] for sid in ids} == {"20190101", "20190701"}
    assert build(recipe, since="LAST", until=date(2019, 12, 31)).up_to_date
    third = build(recipe, since="LAST", until=date(2020, 3, 31))  # no scene in the window: nothing new
    assert third.version == 3 and third.metrics["rejected: no scene over the cell in the time window"] == 12
    assert pd.read_parquet(out / "index.parquet").equals(index) and third.versions[-1]["samples"] == 0


def test_since_last_needs_an_earlier_version(tmp_path, archive):
    api, _, folder = archive
    result = subprocess.run([EO_ETL, "build", str(write_recipe(folder, api)), "--since", "LAST"], cwd=folder,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "--since LAST" in result.stderr and "no finished version yet" in result.stderr


def test_another_recipe_into_the_same_folder_leaves_nothing_of_the_first(archive):
    api, _, folder = archive
    build(load_recipe(write_recipe(folder, api)))  # 12 samples: 3 shards of 4
    cells = ["5329D_5053L", "5329D_5052L", "5328D_5054L"]
    report = build(load_recipe(write_recipe(folder, api, aoi={"cells": cells})))
    index = pd.read_parquet(report.output / "index.parquet")
    assert sorted(index.grid_cell) == sorted(cells) and report.version == 1
    assert sorted(p.name for p in (report.output / "video" / "s2l2a").iterdir()) == ["shard-00000"]
    assert sorted(stored_pixels(report.output)) == sorted(cells)
    assert zarr.open_group(str(report.output / "pixels.zarr"), mode="r")["s2l2a/pixels"].shape[0] == 3
    assert [p.parts[-4] for p in (report.output / "pixels.zarr" / "s2l2a" / "pixels").rglob("c/*/0/0/0")] == ["0"]


@pytest.fixture
def job_server():
    """Beam's own job server on loopback: the Job API that Spark's and Flink's job servers expose, so a build
    with ``--runner spark|flink --option job_endpoint=…`` takes its real submission path (no cluster runs here)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"localhost:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("runner", ["spark", "flink"])
def test_the_portable_runners_submit_to_a_job_server_and_build_the_same_dataset(archive, job_server, runner):
    api, _, folder = archive
    direct = build(load_recipe(write_recipe(folder, api, outputs={"path": str(folder / "direct")})))
    options = {"job_endpoint": job_server, "environment_type": "LOOPBACK"}
    portable = build(load_recipe(write_recipe(folder, api)), runner=runner, options=options)
    pd.testing.assert_frame_equal(
        pd.read_parquet(direct.output / "index.parquet"), pd.read_parquet(portable.output / "index.parquet")
    )
    assert file_digests(direct.output / "pixels.zarr") == file_digests(portable.output / "pixels.zarr")
    assert portable.metrics["samples written"] == 12 and portable.metrics["shards written"] == 3


def test_a_second_build_into_the_same_folder_is_refused_naming_the_first_which_finishes_whole(archive):
    api, faults, folder = archive
    build(load_recipe(write_recipe(folder, api, outputs={"path": str(folder / "whole")})))  # a single clean build

    faults.flowing.clear()  # a stalled network: the first build is still reading scenes when the second starts,
    faults.requests.clear()  # however long the second takes to start on a loaded machine
    recipe = write_recipe(folder, api, workers=2, threads=1)
    first = subprocess.Popen([EO_ETL, "build", str(recipe)], cwd=folder, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not faults.requests and time.monotonic() < deadline:  # the first holds the lock and reads scenes
        time.sleep(0.02)
    second = subprocess.run([EO_ETL, "build", str(recipe)], cwd=folder, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first build ended before the second started: nothing was tested"
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"another build is writing this dataset (build pid {first.pid} on {socket.gethostname()}" in second.stderr

    faults.flowing.set()
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    out = folder / "demo"
    pd.testing.assert_frame_equal(
        pd.read_parquet(folder / "whole" / "index.parquet"), pd.read_parquet(out / "index.parquet")
    )
    assert file_digests(folder / "whole" / "pixels.zarr") == file_digests(out / "pixels.zarr")
    assert file_digests(folder / "whole" / "video") == file_digests(out / "video")
    assert not (out / "_build.lock").exists() and not list(out.rglob("*.partial"))
