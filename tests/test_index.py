"""The dataset index (eo_etl/store/index.py): one declared Arrow schema whatever the rows hold, so indexes of two
builds concatenate; readers (pyarrow, pandas) see the same types with failures, without them, or with only them."""

from __future__ import annotations

import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eo_etl.plan import plan
from eo_etl.recipe import parse_recipe
from eo_etl.sample import Sample
from eo_etl.store.index import INDEX_SCHEMA, index_frame, write_index
from tests.imagery import sentinel2_samples

RECIPE = parse_recipe({
    "name": "t", "aoi": {"bbox": [-67.664, -47.864, -67.622, -47.845]}, "grid": {"distance_km": 1},
    "time": {"start": "2019-01-01", "end": "2019-12-31"},
})  # fmt: skip


def failed(sample: Sample) -> Sample:
    gone = Sample(
        cell=sample.cell,
        row_u=sample.row_u,
        col_r=sample.col_r,
        source=sample.source,
        crs=sample.crs,
        window_start=sample.window_start,
    )
    return gone.fail(OSError("HTTP 503"))


def written(samples: list[Sample], path) -> tuple[pa.Schema, pd.Series]:
    records = [s.row(version=1, recipe_hash="h") for s in samples]
    write_index(index_frame(records, plan(RECIPE)), path)
    return pq.read_schema(path), pd.read_parquet(path).dtypes


def test_the_index_has_one_schema_with_failures_without_them_or_with_only_them(tmp_path):
    samples = sentinel2_samples(4)  # cells 5327D_5050L … 5053L; the last two are in the plan, for failures' shapes
    clean = written(samples, tmp_path / "clean.parquet")
    mixed = written(samples[:2] + [failed(s) for s in samples[2:]], tmp_path / "mixed.parquet")
    broken = written([failed(s) for s in samples[2:]], tmp_path / "failed.parquet")
    for schema, dtypes in (clean, mixed, broken):
        assert schema.equals(INDEX_SCHEMA, check_metadata=False), schema
        pd.testing.assert_series_equal(dtypes, clean[1])  # pandas readers too: Int64 heights, str reasons
    assert clean[1]["height"] == "Int64" and mixed[1]["reason"] == "str"
    both = pd.concat([pd.read_parquet(tmp_path / "clean.parquet"), pd.read_parquet(tmp_path / "failed.parquet")])
    assert both["height"].isna().sum() == 2 and both["height"].dropna().tolist() == [s.pixels.shape[1] for s in samples]


def test_the_index_is_written_without_deprecated_pandas_calls_and_its_times_stay_utc(tmp_path):
    samples = sentinel2_samples(2)
    with warnings.catch_warnings():  # pandas 3.1 deprecates Series.values of a zoned column, which pyarrow < 26 used
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        schema, dtypes = written(samples, tmp_path / "index.parquet")
    assert (
        schema.field("timestamp").type == pa.timestamp("us", tz="UTC") and dtypes["timestamp"] == "datetime64[us, UTC]"
    )
    index = pd.read_parquet(tmp_path / "index.parquet")
    assert index["timestamp"].tolist() == [pd.Timestamp(s.timestamp).tz_convert("UTC") for s in samples]
    assert index["slice_start"].isna().all()
