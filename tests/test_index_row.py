"""The index's one declared row (``store/index_row.IndexRow``): the schema generated from it is the one every index
has, and a row comes back unchanged from each form it is kept in: the index file read by Arrow or by pandas, the
build state's JSON, and a ``Sample``."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from datetime import UTC, datetime

import geopandas as gpd
import pyarrow.parquet as pq
import pytest
import shapely

from eo_etl.pipeline.state import BuildState, staged_name
from eo_etl.sample import Sample
from eo_etl.schemas import index_json_schema
from eo_etl.store.index import index_frame, write_index
from eo_etl.store.index_row import INDEX_SCHEMA, SAMPLE_COLUMNS, STAGED_COLUMNS, IndexRow
from eo_etl.store.read import read_index
from tests.datasets import place_sample

SLICE = (datetime(2019, 1, 1, tzinfo=UTC), datetime(2019, 4, 1, tzinfo=UTC))


def rows() -> list[IndexRow]:
    """A stored sample (zarr and video places), one from a time slice with hrefs, a failure and a rejection."""
    stored, sliced, failed, rejected = (place_sample(k, 10.0 + k, 45.0 + k) for k in range(4))
    sliced.slice_start, sliced.slice_end = SLICE
    sliced.hrefs, sliced.processing_baseline = {"B04": ("https://x/a.tif", "https://x/b.tif")}, "05.00"
    sliced.cloud_fraction, sliced.scene_cloud, sliced.cloud_basis = 0.25, 40.0, "SCL"
    failed.fail(OSError("HTTP 503"))
    rejected.reject("too cloudy")
    failed.pixels = rejected.pixels = None
    placed = {"zarr_group": "s2", "zarr_index": 0, "video_path": "video/s2/shard-00000", "video_frame": 0}
    return [replace(stored.row(1, "hash"), **placed), replace(sliced.row(2, "hash"), zarr_group="s2", zarr_index=1),
            failed.row(1, "hash"), rejected.row(2, "hash")]  # fmt: skip


def cells_of(samples: list[IndexRow]) -> gpd.GeoDataFrame:
    points = gpd.points_from_xy([r.centre_lon for r in samples], [r.centre_lat for r in samples])
    return gpd.GeoDataFrame({"grid_cell": [r.grid_cell for r in samples]}, geometry=points.buffer(0.05), crs=4326)


def written(tmp_path) -> tuple[list[IndexRow], str]:
    made = rows()
    path = tmp_path / "index.parquet"
    write_index(index_frame(made, cells_of(made)), path)
    return made, path


def test_the_schema_is_generated_from_the_declared_row_and_is_every_written_indexs():
    assert INDEX_SCHEMA.names == [f.name for f in fields(IndexRow)]
    for f in fields(IndexRow):
        column = INDEX_SCHEMA.field(f.name)
        assert column.type == f.metadata["arrow"] and column.nullable == f.metadata["nullable"]
        assert column.metadata[b"description"].decode() == f.metadata["description"]
    assert index_json_schema()["required"] == INDEX_SCHEMA.names  # schemas/index.schema.json: the same declaration
    assert SAMPLE_COLUMNS[0] == "sample_id" and SAMPLE_COLUMNS[-1] == "reason"
    assert STAGED_COLUMNS[-2:] == ("recipe_hash", "version")


def test_a_row_comes_back_the_same_from_the_index_file_through_arrow_and_through_pandas(tmp_path):
    made, path = written(tmp_path)
    table = pq.read_table(path)
    assert table.schema.equals(INDEX_SCHEMA, check_metadata=False)
    by_id = {row.sample_id: row for row in made}
    from_arrow = [IndexRow.from_dict(values) for values in table.to_pylist()]
    from_pandas = [IndexRow.from_dict(values) for values in read_index(str(tmp_path)).to_dict("records")]
    assert sorted(r.sample_id for r in from_arrow) == sorted(by_id)
    for back, again in zip(from_arrow, from_pandas, strict=True):
        assert replace(back, geometry=None, bbox=None) == by_id[back.sample_id]  # what the writer did not add
        assert again == back  # NaN, NaT, numpy arrays and JSON hrefs read as Arrow's nulls, lists and mapping
        box = shapely.from_wkb(back.geometry).bounds  # the footprint the writer added, and its covering bbox
        assert box == pytest.approx([back.bbox[side] for side in ("xmin", "ymin", "xmax", "ymax")])
    sliced = next(r for r in from_arrow if r.slice_start is not None)
    assert sliced.hrefs == {"B04": ("https://x/a.tif", "https://x/b.tif")} and sliced.slice_start == SLICE[0]
    failed = next(r for r in from_pandas if r.status == "failed")
    assert failed.height is None and failed.zarr_index is None and failed.reason == "OSError: HTTP 503"


def test_a_row_is_a_samples_and_back():
    for row in rows():
        sample = Sample.from_row(row)  # without pixels: their place in the store and their shape are not its own
        unstored = {"zarr_group": None, "zarr_index": None, "video_path": None, "video_frame": None}
        assert sample.row(row.version, row.recipe_hash) == replace(row, dtype=None, height=None, width=None, **unstored)
        assert sample.record() == row.to_dict(SAMPLE_COLUMNS) | {"dtype": None, "height": None, "width": None}
    sliced = Sample.from_row(rows()[1])
    assert (sliced.cloud_fraction, sliced.scene_cloud, sliced.cloud_basis) == (0.25, 40.0, "SCL")


def test_the_state_keeps_a_rows_columns_to_its_version_and_reads_an_earlier_builds_records(tmp_path):
    state = BuildState(tmp_path)
    made = [replace(row, zarr_group=None, zarr_index=None, video_path=None, video_frame=None) for row in rows()]
    state.stage_range(1, "s2", 0, 4, made)
    text = (tmp_path / "_build" / "versions" / "0001" / "samples" / "s2" / "rows-000000000-000000004.json").read_text()
    assert list(json.loads(text)[0]) == list(STAGED_COLUMNS)
    assert state.range_records(1, "s2", 0, 4) == made
    older = {k: v for k, v in made[0].to_dict(STAGED_COLUMNS).items() if k not in ("cloud_basis", "slice_start")}
    older["timestamp"] = made[0].timestamp.isoformat()
    back = IndexRow.from_dict(older | {"a column it no longer has": 1})
    assert back == replace(made[0], cloud_basis=None, slice_start=None)  # a record of an earlier build resumes
    assert staged_name(made[1]) == f"{made[1].grid_cell}.20190101" and staged_name(made[0]) == made[0].grid_cell


def test_a_row_needs_its_identity_columns():
    with pytest.raises(TypeError, match="grid_cell"):
        IndexRow(sample_id="a.b.20190101", grid_row_u=0, grid_col_r=0, source="s2", crs="EPSG:32632", status="ok")
