"""Rerunning a build whose cells failed: the failures are tried again, and the samples that then succeed take
their places in plan order, so the dataset ends exactly as a build that never failed."""

from __future__ import annotations

import pandas as pd

from eo_etl.build import build
from eo_etl.recipe import load_recipe
from tests.test_pipeline import archive, file_digests, write_recipe  # noqa: F401  (archive is a fixture)


def test_a_rerun_retries_the_cells_that_failed_and_ends_as_a_clean_build(archive):  # noqa: F811
    api, faults, folder = archive
    outputs = {"path": str(folder / "clean"), "formats": ["zarr", "video"], "shard_size": 4}
    build(load_recipe(write_recipe(folder, api, outputs=outputs)))
    faults.plan("/S2B_20190315_demo/B03.tif", 404)  # the first cell to read B03 finds it missing (not yet there)
    recipe = load_recipe(write_recipe(folder, api, workers=1, threads=1))
    first = build(recipe)
    index = pd.read_parquet(first.output / "index.parquet")
    failed = index[index.status == "failed"]
    # only that cell: GDAL's memory of the 404 does not fail the cells after it
    assert len(failed) == 1 and failed.reason.item().startswith("ReadError: band B03 of http://")
    assert failed.reason.item().endswith("/S2B_20190315_demo/B03.tif: HTTP response code: 404")
    assert first.metrics["samples written"] == 11 and first.metrics["retries"] == 0

    again = build(recipe)  # the failed cell is tried again; the samples after it move one place on
    assert again.metrics["cells already finished"] == 11 and again.metrics["samples ok"] == 1
    pd.testing.assert_frame_equal(
        pd.read_parquet(folder / "clean" / "index.parquet"), pd.read_parquet(again.output / "index.parquet")
    )
    assert file_digests(folder / "clean" / "pixels.zarr") == file_digests(again.output / "pixels.zarr")
    assert file_digests(folder / "clean" / "video") == file_digests(again.output / "video")
