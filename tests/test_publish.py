"""Publishing and outputs that ecosystem tools take as they are: the dataset card (huggingface_hub's DatasetCard,
HF datasets through its configs, offline), its pictures, the upload with the real huggingface_hub client against
a mock of the Hub's API on loopback (no Hub is reachable offline), STAC validated with pystac against the core
and the bundled extension schemas, rustac reading the items, rioxarray on a sample from plain xarray."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pystac
import pytest
import rustac
import xarray as xr
import yaml
from huggingface_hub import DatasetCard
from PIL import Image
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from stac_geoparquet.arrow import stac_table_to_items

from eo_etl.publish.card import write_card
from eo_etl.publish.hub import PublishError, publish, upload_files
from eo_etl.recipe import Recipe, RecipeError
from eo_etl.recipe.load import parse_section
from eo_etl.recipe.models import Publish
from eo_etl.store.catalog import EXTENSIONS
from tests.hub_mock import git_oid, mock_hub
from tests.test_cli import EO_ETL, ROOT, demo_recipe

TOKEN = "hf_mockTokenNeverShown0123456789"
SCHEMAS = Path(__file__).parent / "data" / "stac-extensions"


def hub_env(tmp: Path, url: str | None = None, token: str | None = TOKEN) -> dict[str, str]:
    """The environment of an eo-etl process that talks to the mock Hub: its token, an empty HF cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0"}
    if url:
        env["HF_ENDPOINT"] = url
    if token:
        env["HF_TOKEN"] = token
    return env


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The demo built by `eo-etl build` with a publish: section, which uploads it last to the mock Hub."""
    tmp = tmp_path_factory.mktemp("publish")
    outputs = {"path": str(tmp / "demo"), "formats": ["zarr", "taco", "video", "majortom"], "shard_size": 5}
    publish = {"repo_id": "eo-lab/demo", "tags": ["patagonia"], "thumbnails": 6}
    recipe = demo_recipe(tmp, outputs=outputs, publish=publish)
    with mock_hub() as hub:
        result = subprocess.run([EO_ETL, "build", str(recipe)], cwd=tmp, capture_output=True, text=True,
                                timeout=300, env=hub_env(tmp, hub.url))  # fmt: skip
    return tmp / "demo", hub, result


@pytest.fixture
def dataset(published, tmp_path):
    """A copy of the built demo to change."""
    copy = tmp_path / "demo"
    shutil.copytree(published[0], copy, ignore=shutil.ignore_patterns("README.md", "card"))
    return copy


def built_recipe(root: Path) -> Recipe:
    return Recipe.model_validate(json.loads((root / "recipe.json").read_text()))


def test_build_publishes_last_to_the_mock_hub_everything_but_the_build_state_and_never_the_token(published):
    root, hub, result = published
    assert result.returncode == 0, result.stderr
    assert re.search(r"publish\s+done", result.stdout)
    assert [r.path for r in hub.requests][0] == "/api/repos/create"
    assert hub.sent("/api/validate-yaml") and hub.sent("/api/datasets/eo-lab/demo/preupload/main")
    assert [c["summary"] for c in hub.commits] == ["demo version 1: data", "demo version 1: index, STAC and card"]
    held = hub.files[("eo-lab/demo", "main")]
    data, last = upload_files(root)
    assert sorted(held) == sorted(data + last)
    assert all(held[name] == (root / name).read_bytes() for name in held)
    assert "index.parquet" in hub.commits[1]["paths"] and "README.md" in hub.commits[1]["paths"]
    assert not [name for name in held if name.startswith("_build") or "/." in f"/{name}" or name.endswith(".partial")]
    assert (root / "_build").is_dir()  # it was there, and was not sent
    # the token went to the Hub only, in the authorization header
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    assert TOKEN not in result.stdout + result.stderr
    assert not [p for p in root.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_the_card_parses_with_huggingface_hub_and_describes_the_dataset(published):
    root = published[0]
    card = DatasetCard.load(root / "README.md")
    data = card.data.to_dict()
    index = gpd.read_parquet(root / "index.parquet")
    assert data["license"] == "cc-by-4.0" and data["size_categories"] == ["n<1K"]
    assert {"earth-observation", "sentinel-2-l2a", "patagonia"} <= set(data["tags"])
    assert data["configs"][0] == {"config_name": "index", "data_files": [{"split": "train", "path": "index.parquet"}],
                                  "default": True}  # fmt: skip
    text = card.text
    assert "Copernicus Sentinel data terms" in text and "max_cloud 20 %" in text
    assert f"samples stored: **{int((index.status == 'ok').sum())}**" in text
    assert "![Coverage: every planned cell by status](card/coverage.png)" in text
    assert "@misc{demo_" in text and "huggingface.co/datasets/eo-lab/demo" in text
    assert str(root.parent) not in card.content  # no local paths


def test_the_pictures_are_real_pngs_of_the_cells_and_the_samples(published):
    root = published[0]
    index = gpd.read_parquet(root / "index.parquet")
    coverage = np.asarray(Image.open(root / "card" / "coverage.png").convert("RGB"))
    stored_colour = (coverage == (46, 139, 87)).all(axis=-1)
    assert coverage.shape == (480, 720, 3) and stored_colour.sum() > 100 * (index.status == "ok").sum()
    thumbs = Image.open(root / "card" / "thumbnails-s2l2a.png")
    assert thumbs.format == "PNG" and thumbs.size == (6 * 136 + 8, 128 + 32)
    tiles = np.asarray(thumbs.convert("RGB"))[8 : 8 + 128]
    first = tiles[:, 8 : 8 + 128]
    assert first.std() > 10  # a picture, not a flat tile
    # the first tile is the stored sample with the least nodata, in true colour: its brightest pixel is where the
    # sample's red+green+blue is highest
    stored = index[index.status == "ok"].sort_values("nodata", kind="stable").head(6).sort_values("zarr_index")
    pixels = xr.open_zarr(root / "pixels.zarr", group="s2l2a").pixels
    rgb = pixels.isel(sample=int(stored.zarr_index.iloc[0])).sel(band=["B04", "B03", "B02"]).values.astype(float)
    brightest = np.unravel_index(rgb.sum(axis=0).argmax(), rgb.shape[1:])
    tile_brightness = first.astype(float).sum(axis=-1)
    assert tile_brightness[brightest[0] * 2, brightest[1] * 2] >= np.percentile(tile_brightness, 99)


def test_hf_datasets_loads_the_index_and_each_stage_table_offline_through_the_cards_configs(dataset):
    index = gpd.read_parquet(dataset / "index.parquet")
    labels = pd.DataFrame({"sample_id": index.sample_id, "water": np.linspace(0, 1, len(index))})
    labels.to_parquet(dataset / "labels.parquet")  # a later stage's table, keyed by sample_id
    pd.DataFrame({"x": [1]}).to_parquet(dataset / "notes.parquet")  # not keyed by sample_id: not a config
    write_card(dataset, built_recipe(dataset))
    configs = DatasetCard.load(dataset / "README.md").data.to_dict()["configs"]
    names = [c["config_name"] for c in configs]
    # the index first, then every table keyed by sample_id: this one and the demo's own stage tables
    assert names[0] == "index" and "notes" not in names
    assert {"labels", "landcover", "captions", "quality"} <= set(names[1:]) and names[1:] == sorted(names[1:])
    script = f"""
import datasets
index = datasets.load_dataset({str(dataset)!r}, split="train")
labels = datasets.load_dataset({str(dataset)!r}, "labels", split="train")
print(len(index), sorted(index["sample_id"]) == sorted(labels["sample_id"]), labels.column_names)
"""
    env = hub_env(dataset, token=None) | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([str(Path(EO_ETL).parent / "python"), "-c", script], capture_output=True, text=True,
                            timeout=120, env=env, cwd=dataset.parent)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(index)), "True", "['sample_id',", "'water']"]


def test_a_dry_run_writes_the_card_lists_the_files_and_sends_nothing(dataset, tmp_path):
    with mock_hub() as hub:
        command = [EO_ETL, "publish", str(dataset), "--repo", "eo-lab/demo", "--dry-run"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=hub_env(tmp_path, hub.url))
    assert result.returncode == 0, result.stderr
    assert hub.requests == []
    listed = [line.strip() for line in result.stdout.splitlines()[1:]]
    assert "README.md" in listed and "index.parquet" in listed and "pixels.zarr/s2l2a/zarr.json" in listed
    assert not [name for name in listed if name.startswith("_build")]
    assert (dataset / "README.md").is_file() and (dataset / "card" / "coverage.png").is_file()
    assert TOKEN not in result.stdout + result.stderr


def test_an_interrupted_publish_to_the_mock_hub_resumes_without_sending_finished_files_again(
    dataset, monkeypatch, capsys, caplog
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    settings = Publish(repo_id="eo-lab/demo", revision="v1-branch", private=True)
    recipe = built_recipe(dataset)
    with mock_hub() as hub:
        hub.refuse_commits_after = 1  # the data goes up, then the Hub goes away
        with pytest.raises(PublishError, match=r"^publish to eo-lab/demo: the Hub answered 403; rerun to resume$"):
            publish(dataset, recipe, settings, endpoint=hub.url)
        first = hub.committed_paths()
        data, last = upload_files(dataset)
        assert sorted(first) == sorted(data) and hub.repos["eo-lab/demo"]["private"]
        sent_before = len(hub.requests)

        hub.refuse_commits_after = None
        report = publish(dataset, recipe, settings, endpoint=hub.url)
        again = [r for r in hub.requests[sent_before:] if "/commit/" in r.path]
        committed_again = [p for c in hub.commits[1:] for p in c["paths"]]
        assert sorted(committed_again) == sorted(last)  # the finished data files were not sent again
        assert not [r for r in again if any(f'"path": "{name}"'.encode() in r.body for name in data)]
        held = hub.files[("eo-lab/demo", "v1-branch")]
        assert {name: git_oid(content) for name, content in held.items()} == {
            name: git_oid((dataset / name).read_bytes()) for name in data + last
        }
        assert report.url.startswith(f"{hub.url}/datasets/eo-lab/demo/commit/")
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text


def test_publish_without_a_token_or_a_built_dataset_says_so_in_one_line(dataset, tmp_path):
    with mock_hub() as hub:
        result = subprocess.run([EO_ETL, "publish", str(dataset), "--repo", "eo-lab/demo"], capture_output=True,
                                text=True, timeout=120, env=hub_env(tmp_path, hub.url, token=None))  # fmt: skip
        assert hub.requests == []
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token)"
    result = subprocess.run([EO_ETL, "publish", str(tmp_path), "--repo", "eo-lab/demo"], capture_output=True,
                            text=True, timeout=120, env=hub_env(tmp_path))  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a built dataset" in result.stderr
    result = subprocess.run([EO_ETL, "publish", str(dataset), "--repo", "../../etc"], capture_output=True,
                            text=True, timeout=120, env=hub_env(tmp_path))  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: --repo/--revision: publish.repo_id")


def stac_validator() -> JsonSchemaSTACValidator:
    """pystac's validator with the extension schemas bundled in tests/data (pystac ships the core ones); any other
    schema it would fetch fails the test instead of reaching the network."""
    validator = JsonSchemaSTACValidator()
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        validator.schema_cache[schema["$id"].rstrip("#")] = schema
    assert {uri for uri in EXTENSIONS} <= set(validator.schema_cache)

    def offline(uri: str):
        raise AssertionError(f"the validator asked the network for {uri}")

    validator._get_schema = lambda uri: validator.schema_cache[uri] if uri in validator.schema_cache else offline(uri)
    return validator


def test_the_stac_collection_and_every_item_validate_and_rustac_reads_the_items(published):
    root = published[0]
    validator = stac_validator()
    collection = pystac.Collection.from_file(str(root / "collection.json"))
    assert collection.validate(validator=validator)
    hub_url = f"{published[1].url}/datasets/eo-lab/demo"
    assert [link.href for link in collection.links if link.rel == "alternate"] == [hub_url]  # after publishing
    items = list(stac_table_to_items(pq.read_table(root / "items.parquet")))
    index = gpd.read_parquet(root / "index.parquet")
    assert sorted(item["id"] for item in items) == sorted(index.sample_id[index.status == "ok"])
    for item in items:
        assert pystac.Item.from_dict(item).validate(validator=validator)
        assert re.fullmatch(r"MAJORTOM1000M-\d+[UD]_\d+[LR]", item["properties"]["grid:code"])
    read = rustac.read_sync(str(root / "items.parquet"))
    assert sorted(f["id"] for f in read["features"]) == sorted(item["id"] for item in items)
    assert read["features"][0]["assets"]["pixels"]["bands"][2] == {"name": "B04"}


def test_rioxarray_georeferences_a_sample_from_plain_xarray(published):
    import rioxarray  # noqa: F401

    root = published[0]
    index = gpd.read_parquet(root / "index.parquet")
    ds = xr.open_zarr(root / "pixels.zarr", group="s2l2a")  # no eo-etl
    for row in index[index.status == "ok"].itertuples():
        one = ds.pixels.isel(sample=int(row.zarr_index))
        assert one.rio.crs.to_string() == row.crs == str(one.crs.values)
        assert tuple(one.rio.transform())[:6] == pytest.approx(tuple(row.transform)[:6])
        assert str(one.sample_id.values) == row.sample_id and float(one.nodata) == pytest.approx(row.nodata)


def test_the_readmes_commands_for_opening_the_demo_run_as_written(published, tmp_path):
    text = (ROOT / "README.md").read_text()
    block = text.split("Opening it, with or without eo-etl:\n\n```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "demo").symlink_to(published[0])
    env = hub_env(tmp_path) | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([str(Path(EO_ETL).parent / "python"), "-c", block], capture_output=True, text=True,
                            timeout=180, env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_publish_settings_are_not_part_of_what_the_dataset_is(published):
    recipe = built_recipe(published[0])
    other = recipe.model_copy(update={"publish": Publish(repo_id="someone/else", tags=["x"])})
    assert other.fingerprint() == recipe.fingerprint() and other.series_fingerprint() == recipe.series_fingerprint()
    assert yaml.safe_load((published[0] / "README.md").read_text().split("---")[1])["pretty_name"] == "demo"


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"repo_id": "../../etc"}, "publish.repo_id"),
        ({"repo_id": "a/b", "revision": "../main"}, "publish.revision"),
        ({"repo_id": "a/b", "thumbnails": 10_000}, "publish.thumbnails"),
        ({"repo_id": "a/b", "tags": ["Bad Tag\x1b[31m"]}, "publish.tags[0]"),
        ({"repo_id": "a/b", "token": "hf_x"}, "publish: unknown field 'token'"),
    ],
)
def test_bad_publish_settings_are_one_line_naming_the_field(settings, problem):
    with pytest.raises(RecipeError) as caught:
        parse_section(Publish, settings, "recipe.yaml", "publish")
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(problem)
    assert "\x1b" not in caught.value.problems[0]
