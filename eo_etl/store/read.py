"""Opening a built dataset, from a folder or any fsspec URL (``https://…``, ``s3://…``, ``gs://…``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from eo_etl.sample import Sample
from eo_etl.stages.core import STAGE_NAME
from eo_etl.store.index import INDEX_NAME
from eo_etl.store.index_row import IndexRow
from eo_etl.store.series import cell_series, position_grid
from eo_etl.store.zarr import INDEX_COLUMNS, STORE_NAME, quiet_consolidated


def join_path(root: str, *parts: str) -> str:
    """``parts`` under ``root``, a folder or URL, joined by ``/``."""
    return "/".join([str(root).rstrip("/"), *parts])


def read_index(root: str, storage_options: dict | None = None) -> pd.DataFrame:
    """The dataset's index as a plain table (geometry as WKB); every (cell, source), failures included."""
    return pd.read_parquet(join_path(root, INDEX_NAME), storage_options=storage_options)


def sources(root: str, storage_options: dict | None = None) -> list[str]:
    """The sources with stored pixels, i.e. the groups of ``pixels.zarr``."""
    with quiet_consolidated():
        group = zarr.open_group(join_path(root, STORE_NAME), mode="r", storage_options=storage_options)
    return sorted(name for name, _ in group.groups())


def choose_source(root, source: str | None, names: list[str]) -> str:
    """``source``, checked against the dataset's ``names``; may be left out when there is one."""
    if source is None:
        if len(names) != 1:
            raise ValueError(f"{root} holds the sources {names}: say which one")
        return names[0]
    if source not in names:
        raise ValueError(f"{root} has no source {source!r}; it has {names}")
    return source


def stored_rows(index: pd.DataFrame, source: str) -> pd.DataFrame:
    """The index rows of ``source``'s stored samples, in store order."""
    return index[(index.source == source) & index.zarr_index.notna()].sort_values("zarr_index")


def stage_columns(root, rows: pd.DataFrame, stages: Sequence[str], storage_options: dict | None = None) -> pd.DataFrame:
    """The columns of the stage tables ``stages`` (``landcover.parquet`` …) for ``rows``, in their order, named
    ``<stage>.<column>``; None where a stage has no row for a sample."""
    joined = pd.DataFrame(index=pd.Index(rows["sample_id"], name="sample_id"))
    for stage in stages:
        if not STAGE_NAME.fullmatch(stage):
            raise ValueError(f"{stage!r} is not a stage name")
        try:
            table = pd.read_parquet(join_path(root, f"{stage}.parquet"), storage_options=storage_options)
        except FileNotFoundError:
            raise ValueError(f"{root} has no {stage} table ({stage}.parquet): run that stage first") from None
        table = table.set_index("sample_id").add_prefix(f"{stage}.")
        joined = joined.join(table.astype(object).where(table.notna(), None))
    return joined.reset_index(drop=True)


def open_dataset(
    root,
    source: str | None = None,
    *,
    stages: Sequence[str] = (),
    time_series: bool = False,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """One source's stored samples as a lazy xarray Dataset: ``pixels`` (sample, band, y, x) in the
    delivered dtype, labelled bands and cells, per-sample x/y/time/EPSG, band scale/offset, the band
    statistics in ``attrs``, and the index's quality and provenance columns per sample. Masks of the stages
    after the store (``landcover.class`` …) are variables beside ``pixels``; the columns of the stage tables
    named in ``stages`` are per-sample coordinates ``<stage>.<column>``.

    ``source`` may be left out when the dataset has one. With ``time_series`` the samples are grouped by place:
    see :func:`series_dataset`.
    """
    if source is None:
        source = choose_source(root, source, sources(root, storage_options))
    try:  # one read of the consolidated metadata; the sources are listed only to say what a wrong name missed
        with quiet_consolidated():
            dataset = xr.open_zarr(join_path(root, STORE_NAME), group=source, storage_options=storage_options,
                                   consolidated=True, zarr_format=3, mask_and_scale=False)  # fmt: skip
    except (KeyError, FileNotFoundError):
        choose_source(root, source, sources(root, storage_options))
        raise
    missing = [column for column in INDEX_COLUMNS if column not in dataset.coords]  # stores before format 3
    if not missing and not stages and not time_series:
        return dataset
    rows = stored_rows(read_index(root, storage_options), source)
    columns = {column: ("sample", rows[column].to_numpy()) for column in missing}
    extra = stage_columns(root, rows, stages, storage_options)
    columns |= {column: ("sample", extra[column].to_numpy()) for column in extra.columns}
    dataset = dataset.assign_coords(columns)
    return series_dataset(dataset, rows) if time_series else dataset


def series_dataset(dataset: xr.Dataset, rows: pd.DataFrame) -> xr.Dataset:
    """``dataset``'s per-sample variables regrouped (cell, time_slot, …), still lazy: ``pixels`` (cell,
    time_slot, band, y, x), ``present`` (cell, time_slot) saying which slots hold a sample (a padded slot repeats
    the cell's first sample's pixels: mask it), ``time`` the acquisition, ``slice_start`` the slice and
    ``sample_id`` per slot. With fixed slices (seasons, months, N days) slot t is the same slice for every cell
    (store/series.py)."""
    series = cell_series(rows)
    positions, present = position_grid(series)
    picked = dataset.drop_vars("sample").isel(sample=xr.DataArray(positions, dims=("cell", "time_slot")))
    by_position = rows.set_index(rows.zarr_index.astype(int))
    slice_start = by_position["slice_start"] if "slice_start" in by_position else pd.Series(pd.NaT, by_position.index)
    starts = pd.to_datetime(slice_start, utc=True).dt.tz_localize(None).reindex(positions.ravel()).to_numpy()
    return picked.assign_coords(
        cell=[one.cell for one in series],
        present=(("cell", "time_slot"), present),
        slice_start=(
            ("cell", "time_slot"),
            np.where(present.ravel(), starts, np.datetime64("NaT")).reshape(present.shape),
        ),
    )


def sample_array(dataset: xr.Dataset, position: int) -> xr.DataArray:
    """The pixels of the sample at ``position`` (its ``zarr_index``) as a georeferenced DataArray: ``rio.crs`` from
    its ``epsg``, ``rio.transform()`` from its x/y (rioxarray, which any reader can call the same way)."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    one = dataset.pixels.isel(sample=position)
    return one.rio.write_crs(int(one.epsg)).rio.set_spatial_dims(x_dim="x", y_dim="y")


def read_samples(
    root,
    source: str,
    *,
    index: pd.DataFrame | None = None,
    time_series: bool = False,
    storage_options: dict | None = None,
) -> Iterator[Sample] | Iterator[list[Sample]]:
    """The stored samples of ``source`` with their pixels and index records, in store order, a shard at a time
    (``index``: the dataset's index when already in memory). With ``time_series``, each cell's samples as one
    list in time order (store/series.py), cells in store order."""
    rows = stored_rows(read_index(root, storage_options) if index is None else index, source)
    if time_series:
        return _cell_lists(root, source, rows, storage_options)
    return _samples(root, source, rows, storage_options)


def _cell_lists(root, source: str, rows: pd.DataFrame, storage_options: dict | None) -> Iterator[list[Sample]]:
    """A cell's slices are at consecutive positions (store/series.py): gathered as the store's order hands them."""
    cell_of = {one.cell: one for one in cell_series(rows)}
    pending: dict[str, dict[str, Sample]] = {}
    for sample in _samples(root, source, rows, storage_options):
        held = pending.setdefault(sample.cell, {})
        held[str(sample.sample_id)] = sample
        wanted = cell_of[sample.cell].sample_ids
        if len(held) == len(wanted):
            del pending[sample.cell]
            yield [held[sample_id] for sample_id in wanted]


def _samples(root, source: str, rows: pd.DataFrame, storage_options: dict | None) -> Iterator[Sample]:
    pixels = stored_pixels(root, source, storage_options)
    yield from samples_at(pixels, rows.drop(columns="geometry", errors="ignore").to_dict("records"), pixels.shards[0])


def stored_pixels(root, source: str, storage_options: dict | None = None) -> zarr.Array:
    """``source``'s pixel array, opened to read."""
    with quiet_consolidated():
        return zarr.open_array(join_path(root, STORE_NAME, source, "pixels"), mode="r", storage_options=storage_options)


def samples_at(pixels: zarr.Array, records: list[dict], most: int) -> Iterator[Sample]:
    """The samples of ``records`` (index rows as dicts, geometry left out) with their pixels: those at consecutive
    positions read together, ``most`` at a time (each shard's index read once, not once a sample)."""
    positions = [int(record["zarr_index"]) for record in records]
    for start, stop in _runs(positions, most):
        block = pixels[positions[start] : positions[stop - 1] + 1]
        for i in range(start, stop):
            yield sample_of(records[i], block[i - start])


def _runs(positions: list[int], most: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of the runs of consecutive ``positions``, each of ``most`` at most."""
    start = 0
    for i in range(1, len(positions) + 1):
        if i == len(positions) or positions[i] != positions[i - 1] + 1 or i - start == most:
            yield start, i
            start = i


def sample_of(record: dict, pixels: np.ndarray) -> Sample:
    """A stored sample from its index row (as a dict, geometry left out) and its pixels."""
    return Sample.from_row(IndexRow.from_dict(record), pixels)
