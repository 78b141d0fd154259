"""Time series of a place: a (cell, source)'s stored samples over time, as readers hand them out.

Storage over time — the choice. A dataset stores **one sample per (cell, source, time slice)**, each a row of the
index and a position along the store's ``sample`` dimension, not a sample with a time dimension of its own:

    pixels.zarr/<source>/pixels   (sample, band, y, x)   a cell's slices at consecutive positions, in time order
    index.parquet                 one row per sample; slice_start / slice_end name its slice, timestamp the
                                  acquisition, sample_id = CELL.SOURCE.START (sources/slices.py defines START)

Why separate samples rather than (sample, time, band, y, x):
- Slices are ragged: a cell may lack a season (no clear scene: a rejected row), ``every: scene`` gives each cell
  its own count. A time dimension needs a fixed T, so it would pad missing slices with nodata frames (stored,
  compressed, read) and need a second "present" mask; separate samples store only what exists.
- Everything keyed by ``sample_id`` (stage tables, masks, curation flags, versions appending samples, resuming
  a build by range) works unchanged: a slice is a sample like any other, with its own provenance row.
- Reading one acquisition is one chunk either way; a chunk per sample keeps random access for models that
  train on single images (most of them).

What it costs readers: a sequence is a gather, not a slice — T chunk reads at consecutive positions of one
shard or two (positions are assigned cell by cell, slices in time order, so a place's series is contiguous
and usually in one shard), plus grouping the index by cell, which :func:`cell_series` does. Readers that want
a fixed T (a model with four seasons) get missing slices padded here, at read time, with ``present`` saying
which are real: ``open_dataset(time_series=True)`` gives (cell, time_slot, band, y, x), ``read_samples(
time_series=True)`` lists of samples, ``SampleDataset(time_series=True)`` tensors [T, C, H, W] with times.
Video cubes hold a shard's samples as frames in the same order, so with ``outputs.shard_size`` a multiple of
the slices per cell (4 for seasons), and every slice present, each cube is whole places over time; TACO lists a
cell's samples one after the other in time order (group by ``grid_cell``, order by ``stac:time_start``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CellSeries:
    """One cell's stored samples of a source, in time order."""

    cell: str
    positions: tuple[int, ...]  # zarr_index of each
    sample_ids: tuple[str, ...]
    times: tuple[pd.Timestamp, ...]  # acquisition time of each
    slice_starts: tuple[pd.Timestamp | None, ...]  # the slice of each (None when the recipe did not slice time)


def cell_series(rows: pd.DataFrame) -> list[CellSeries]:
    """Stored index rows of one source (``stored_rows``) grouped by cell, cells in store order, each cell's
    samples in time order (slice start, then acquisition, then id)."""
    if rows.empty:
        return []
    rows = rows.assign(_first=rows.groupby("grid_cell").zarr_index.transform("min"))
    slice_start = rows["slice_start"] if "slice_start" in rows else pd.Series(pd.NaT, index=rows.index)
    rows = rows.assign(_slice=pd.to_datetime(slice_start, utc=True))
    rows = rows.sort_values(["_first", "_slice", "timestamp", "sample_id"], kind="stable")
    out = []
    for cell, group in rows.groupby("grid_cell", sort=False):
        out.append(
            CellSeries(
                cell=str(cell),
                positions=tuple(int(p) for p in group.zarr_index),
                sample_ids=tuple(group.sample_id),
                times=tuple(pd.Timestamp(t) for t in group.timestamp),
                slice_starts=tuple(None if pd.isna(t) else pd.Timestamp(t) for t in group["_slice"]),
            )
        )
    return out


def position_grid(series: list[CellSeries]) -> tuple[np.ndarray, np.ndarray]:
    """(positions, present): (cell, time) arrays padded to the longest series; a padded slot repeats the cell's
    first position and is not ``present``. With fixed slices (seasons, months, N days) the slots are aligned on the
    slices every cell has any sample in, so slot t is the same slice for every cell."""
    starts = sorted({s for one in series for s in one.slice_starts if s is not None})
    aligned = bool(starts) and all(
        None not in one.slice_starts and len(set(one.slice_starts)) == len(one.slice_starts) for one in series
    )
    length = len(starts) if aligned else max((len(one.positions) for one in series), default=0)
    positions = np.zeros((len(series), length), dtype=np.int64)
    present = np.zeros((len(series), length), dtype=bool)
    for i, one in enumerate(series):
        slots = [starts.index(s) for s in one.slice_starts] if aligned else range(len(one.positions))
        positions[i, :] = one.positions[0]
        for slot, position in zip(slots, one.positions):
            positions[i, slot], present[i, slot] = position, True
    return positions, present
