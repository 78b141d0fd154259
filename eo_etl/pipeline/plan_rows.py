"""The plan as work: the cells reach the workers as ranges of the written plan's rows, never in the job graph.

The plan (``plan.parquet``, GeoParquet) is written in row groups of ``PLAN_ROW_GROUP`` rows, so a worker reads
the few thousand rows around its range, a handful of columns, not the plan. A range is also the unit of the
build's state (``state.py``): its cells are recorded together, in one file. Ranges depend on the number of
rows alone, which a recipe's plan fixes: every run of a build, and every version, cuts the same ranges. A
worker takes one or more whole ranges at once (one catalogue search for them), as many as keep every worker
busy.
"""

from __future__ import annotations

import bisect

import pandas as pd
import pyarrow.parquet as pq

from eo_etl.sources import SEARCH_BATCH  # cells per range: one catalogue search, one state file
from eo_etl.store.location import Location

PLAN_ROW_GROUP = 8192  # rows a worker reads to find its range's cells
BATCHES_PER_WORKER = 4  # elements per worker at least, so that every worker stays busy to the end
RANGES_AT_LEAST = 64  # a small plan is cut finer, so that its cells still spread over the workers
CELL_COLUMNS = ["grid_cell", "grid_row_u", "grid_col_r", "centre_lat", "centre_lon"]


def range_size(rows: int) -> int:
    """Cells per range for a plan of ``rows`` cells: 1 up to 127 cells, ``SEARCH_BATCH`` from 4096 on."""
    return max(1, min(SEARCH_BATCH, rows // RANGES_AT_LEAST))


def plan_ranges(rows: int, first: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
    """(first, stop) row ranges covering a plan of ``rows`` cells (rows ``first`` to ``stop`` of it, which
    begin a range), in plan order."""
    size = range_size(rows)
    stop = rows if stop is None else min(stop, rows)
    return [(start, min(start + size, stop)) for start in range(first, stop, size)]


def work_ranges(rows: int, workers: int) -> list[tuple[int, int]]:
    """The elements the workers share: whole ranges, enough of them to keep ``workers`` busy to the end, each
    of at most ``SEARCH_BATCH`` cells (one catalogue search) unless a range alone is larger."""
    batch = max(1, min(SEARCH_BATCH, -(-rows // (max(1, workers) * BATCHES_PER_WORKER))))
    size = range_size(rows) * max(1, -(-batch // range_size(rows)))
    return [(first, min(first + size, rows)) for first in range(0, rows, size)]


def plan_length(plan: Location) -> int:
    """The plan's number of cells, from its footer alone."""
    with plan.fs.open(plan.path, "rb") as file:
        return pq.ParquetFile(file).metadata.num_rows


class PlanReader:
    """Rows of a written plan by range; keeps the footer and the last row group read (consecutive ranges
    mostly share it)."""

    def __init__(self, plan: Location, columns: list[str] = CELL_COLUMNS):
        self.plan, self.columns = plan, columns
        self._starts: list[int] | None = None
        self._cached: tuple[int, pd.DataFrame] | None = None

    def rows(self, first: int, stop: int) -> pd.DataFrame:
        """Plan rows ``first`` to ``stop`` (exclusive), the cell columns only."""
        with self.plan.fs.open(self.plan.path, "rb") as handle:
            file = pq.ParquetFile(handle)
            if self._starts is None:
                meta = file.metadata
                sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
                self._starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            parts = []
            group = bisect.bisect_right(self._starts, first) - 1
            while group < len(self._starts) - 1 and self._starts[group] < stop:
                frame = self._group(file, group)
                begin = self._starts[group]
                parts.append(frame.iloc[max(first - begin, 0) : stop - begin])
                group += 1
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=self.columns)

    def _group(self, file: pq.ParquetFile, group: int) -> pd.DataFrame:
        if self._cached is None or self._cached[0] != group:
            self._cached = group, file.read_row_group(group, columns=self.columns).to_pandas()
        return self._cached[1]
