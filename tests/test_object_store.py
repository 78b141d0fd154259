"""A dataset written to an object store, as runners whose workers share no disk (Dataflow, Spark, Flink) need:
the Beam build (two worker processes) against a real S3 API on loopback (moto's server), read back through
the S3 API, compared with the same recipe built to a local folder; resuming and --since LAST against the
bucket. Then the location module alone (local writes are whole or absent, URLs join as paths do, a folder
uploads with its completing file last) and a recipe's output URL."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import s3fs
from moto.server import ThreadedMotoServer

import eo_etl
from eo_etl.build import build
from eo_etl.pipeline.state import BuildState
from eo_etl.recipe import load_recipe, parse_recipe
from eo_etl.store.location import (
    Location,
    OutsideError,
    is_url,
    local_file_problem,
    local_folder_problem,
    read_each,
)
from tests.servers import free_port
from tests.test_pipeline import EO_ETL, archive, file_digests, write_recipe  # noqa: F401 (a fixture)
from tests.test_recipe import problems_of, recipe_with

BUCKET = "bucket"
URL = f"s3://{BUCKET}/demo"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(monkeypatch) -> Iterator[s3fs.S3FileSystem]:
    """moto's S3 server on a free loopback port with an empty bucket; the environment points every S3 client at it
    (the Beam workers are subprocesses: they inherit it). Yields a client of our own, for reading back."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    s3fs.S3FileSystem.clear_instance_cache()  # a client reads the environment once: none of another test's server
    try:
        yield s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def object_digests(fs: s3fs.S3FileSystem, prefix: str) -> dict[str, str]:
    return {path[len(prefix) + 1 :]: hashlib.sha256(fs.cat_file(path)).hexdigest() for path in fs.find(prefix)}


def test_a_beam_build_to_s3_equals_a_local_build_and_resumes_there(archive, s3, monkeypatch):  # noqa: F811
    api, _, folder = archive
    monkeypatch.chdir(folder)  # where a URL mistaken for a path would become a folder
    formats = {"formats": ["zarr", "taco", "video", "majortom"], "shard_size": 4}
    local = build(load_recipe(write_recipe(folder, api, outputs={"path": str(folder / "local"), **formats})))
    recipe = load_recipe(write_recipe(folder, api, outputs={"path": URL, **formats}))
    remote = build(recipe)

    assert remote.output == URL and remote.metrics["cells planned"] == 12 and remote.metrics["shards written"] == 3
    index = pd.read_parquet(f"{URL}/index.parquet", storage_options=s3.storage_options)
    assert len(index) == 12 and sorted(index.grid_cell) == sorted(set(index.grid_cell)) and set(index.status) == {"ok"}
    pd.testing.assert_frame_equal(index, pd.read_parquet(local.output / "index.parquet"))
    ds = eo_etl.open_dataset(URL, storage_options=s3.storage_options)
    reference = eo_etl.open_dataset(local.output)
    assert list(ds.sample.values) == list(reference.sample.values) and len(ds.sample) == 12
    np.testing.assert_array_equal(ds.pixels.values, reference.pixels.values)

    # the same objects as the local folder's files, byte for byte: Zarr, video, TACO, Major TOM, STAC, index, state
    objects = object_digests(s3, f"{BUCKET}/demo")
    files = file_digests(local.output)
    assert {"collection.json", "items.parquet", "versions.json", "video/s2l2a/shard-00002/video.json",
            "majortom/s2l2a/metadata.parquet", "majortom/s2l2a/images/part_00003.parquet"} <= set(objects)  # fmt: skip
    assert any(name.startswith("taco/s2l2a/.tacocat/") for name in objects)
    assert any(name.endswith(".tacozip") for name in objects)
    del objects["recipe.json"], files["recipe.json"]  # they say where the dataset is written
    assert objects == files

    # a rerun finds every cell and shard done, and leaves the same index
    again = build(recipe)
    assert again.metrics["cells already finished"] == 12 and again.metrics["shards already written"] == 3
    assert again.metrics.get("shards written", 0) == 0
    pd.testing.assert_frame_equal(index, pd.read_parquet(f"{URL}/index.parquet", storage_options=s3.storage_options))
    assert build(recipe, since="LAST", until=date(2019, 6, 30)).up_to_date  # the bucket's versions.json: v1 ends there

    assert not list(folder.glob("s3*")) and not Path("s3:").exists()  # nothing went to a local "s3:" folder


def test_since_last_adds_a_version_in_the_bucket_without_rewriting_full_shards(archive, s3, monkeypatch):  # noqa: F811
    api, _, folder = archive
    monkeypatch.chdir(folder)
    recipe = write_recipe(folder, api, outputs={"path": URL, "formats": ["zarr", "video"], "shard_size": 5})
    build(load_recipe(recipe))
    shards = f"{BUCKET}/demo/pixels.zarr/s2l2a/pixels/c"
    before = {k: s3.info(f"{shards}/{k}/0/0/0") for k in range(3)}  # 5 + 5 + 2 samples

    later = subprocess.run(  # the command, with the URL given on its command line
        [EO_ETL, "build", str(recipe), "--out", URL, "--since", "LAST", "--until", "2019-12-31"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert later.returncode == 0, later.stderr
    assert f"→ {URL} (version 2)" in later.stdout and "shards already written 2" in later.stdout
    versions = json.loads(s3.cat_file(f"{BUCKET}/demo/versions.json"))
    assert [(v["version"], v["start"][:10], v["end"][:10], v["samples"]) for v in versions] == [
        (1, "2019-01-01", "2019-07-01", 12),
        (2, "2019-07-01", "2020-01-01", 12),
    ]
    index = pd.read_parquet(f"{URL}/index.parquet", storage_options=s3.storage_options)
    assert len(index) == 24 and sorted(index.zarr_index) == list(range(24))
    for k in (0, 1):  # version 1's full shards are the same objects, not written again
        after = s3.info(f"{shards}/{k}/0/0/0")
        assert (after["ETag"], after["LastModified"]) == (before[k]["ETag"], before[k]["LastModified"])
    assert not list(folder.glob("s3*"))


def test_a_local_write_is_whole_or_absent(tmp_path):
    target = Location(tmp_path / "a" / "b.json")
    target.write_text("{}")
    assert target.read_text() == "{}" and [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]
    with pytest.raises(RuntimeError), target.staged_file() as partial:
        partial.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "{}" and [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]
    (Location(tmp_path) / "a" / "b.json").remove()
    assert not target.exists() and list((tmp_path / "a").iterdir()) == []


def test_what_killed_writers_left_is_removed_and_nothing_else(tmp_path):
    (tmp_path / "_build" / "s").mkdir(parents=True)
    (tmp_path / "_build" / "s" / "c.json.123.partial").write_text("{")  # killed between write and rename
    (tmp_path / "_build" / "s" / "d.json").write_text("{}")
    (tmp_path / "video" / ".shard-00001.partial").mkdir(parents=True)  # a cube folder being built
    (tmp_path / "video" / ".shard-00001.partial" / "b.mkv").write_bytes(b"x")
    assert Location(tmp_path).remove_partial_files() == 2
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == ["_build/s/d.json"]
    assert Location("s3://bucket/x").remove_partial_files() == 0  # an object store's PUT is whole


def test_urls_join_like_paths_and_relative_paths_become_absolute(tmp_path, monkeypatch):
    root = Location("s3://bucket/prefix/")
    leaf = root / "_build" / "versions.json"
    assert str(leaf) == "s3://bucket/prefix/_build/versions.json" and leaf.name == "versions.json"
    assert leaf.parent.parent == root and root.native == "s3://bucket/prefix" and root.local_path is None
    assert pickle.loads(pickle.dumps(leaf)) == leaf
    assert is_url("s3://b/x") and is_url("gs://b/x") and not is_url("out/demo") and not is_url(Path("s3:/b"))
    monkeypatch.chdir(tmp_path)
    assert Location("out/demo").native == tmp_path / "out" / "demo"
    assert Location(f"file://{tmp_path}/x").native == tmp_path / "x"
    assert (Location("out") / "demo").url == str(tmp_path / "out" / "demo")


def test_a_name_never_leads_out_of_the_folder_it_is_joined_to(tmp_path):
    root = Location(tmp_path / "dataset")
    for name in ("..", "../x", "a/../../x", "/../etc/passwd", "samples/../../../escape"):
        with pytest.raises(OutsideError, match="leads out of"):
            root / name
    with pytest.raises(OutsideError):
        Location("s3://bucket/prefix").join("x", "..", "..", "y")
    assert (root / "/abs").url == f"{root.url}/abs" and (root / "a/../b").url == f"{root.url}/a/../b"  # inside
    # the writers join every name through a Location: a source name from a recipe cannot climb out either
    with pytest.raises(OutsideError):
        BuildState(root).range_records(1, "../../../escape", 0, 1)
    assert not (tmp_path / "escape").exists() and not root.exists()


def test_an_output_folder_that_cannot_be_one_is_named_with_why(tmp_path):
    (tmp_path / "file").write_text("x")
    assert local_folder_problem(tmp_path / "new" / "dataset") is None
    assert local_folder_problem(tmp_path / "file") == f"{tmp_path / 'file'} is a file, not a folder"
    assert (
        local_folder_problem(tmp_path / "file" / "x")
        == f"{tmp_path / 'file' / 'x'} is under the file {tmp_path / 'file'}"
    )
    assert local_folder_problem(Path("/proc/self/x")) == "/proc/self/x is in /proc, not on a disk"
    assert local_file_problem(tmp_path / "file") is None  # a file is replaced
    assert local_file_problem(tmp_path) == f"{tmp_path} is a folder, not a file"


def test_a_folder_is_uploaded_with_its_completing_file_last_and_stale_objects_removed(tmp_path):
    cube = Location("memory://datasets/video/shard-00000")  # an object store in this process
    with cube.staged_folder(last=("video.json",)) as folder:
        folder.mkdir()
        for name in ("stream-0.mkv", "stream-1.mkv", "video.json"):
            (folder / name).write_text(name)
    assert [p.name for p in cube.glob("*")] == ["stream-0.mkv", "stream-1.mkv", "video.json"]
    with pytest.raises(RuntimeError), cube.staged_folder(last=("video.json",)) as folder:
        raise RuntimeError("killed")  # nothing uploaded, nothing removed
    with cube.staged_folder(last=("video.json",)) as folder:
        folder.mkdir()
        (folder / "stream-0.mkv").write_text("again")
        (folder / "video.json").write_text("one stream")
    assert [p.name for p in cube.glob("*")] == ["stream-0.mkv", "video.json"]
    assert read_each(cube.glob("*")) == [b"again", b"one stream"]
    cube.parent.remove(recursive=True)
    assert not cube.exists()


def test_a_recipe_keeps_an_output_url_whole_and_names_an_unknown_protocol():
    assert parse_recipe(recipe_with(outputs={"path": "s3://bucket/x"})).output_path == "s3://bucket/x"
    assert parse_recipe(recipe_with(outputs={"path": "data/x"})).output_path == Path("data/x")  # relative, as given
    assert problems_of(recipe_with(outputs={"path": "s4://bucket/x"})) == [
        "outputs.path: 's4://bucket/x': unknown protocol 's4'; a folder, s3://… or gs://…"
    ]
