"""The Major TOM grid of ESA Φ-lab, cell for cell as its reference `grid.py` builds it, vectorised.

The reference builds every row with ``np.linspace`` → ``np.mod`` → ``np.sort`` and names cells by their
position around the zero row/column; points are mapped with ``np.searchsorted``. Sorting a wrapped
``linspace`` is a rotation, so the sorted position of every value is known in closed form: a cell's
latitude and longitude are computed directly from its signed row/column with the very same float
operations, which gives the reference's numbers bit for bit without materialising the grid
(``tests/test_grid_reference.py`` checks this against a literal per-point restatement).

Conventions kept from the reference, quirks included:
- the grid point of a cell is its bottom-left (south-west) corner;
- a point exactly on a grid line belongs to the cell below / to the left (``searchsorted`` side "left");
  a point on the -180° meridian therefore falls in the easternmost column, across the antimeridian;
- the top row's height and the last column's width repeat those of their neighbours;
- the UTM zone of a cell is the zone of its grid point, with the Norway and Svalbard exceptions.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

RADIUS_EQUATOR_KM = 6378.137
CELL_NAME = re.compile(r"^(\d+)([UD])_(\d+)([RL])$")


MIN_DISTANCE_KM, MAX_DISTANCE_KM = 0.1, 1000.0


class CellNameError(ValueError):
    """A cell name that is malformed or not in the grid."""


@dataclass(frozen=True)
class Footprints:
    """UTM sample footprints of cells: EPSG code and bounds in metres, one entry per cell."""

    epsg: NDArray[np.int64]
    xmin: NDArray[np.float64]
    ymin: NDArray[np.float64]
    xmax: NDArray[np.float64]
    ymax: NDArray[np.float64]

    def centre_lonlat(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(lon, lat) of the footprints' centres: the centre of the image a sample holds."""
        return transform_by_zone(self.epsg, (self.xmin + self.xmax) / 2, (self.ymin + self.ymax) / 2, to_utm=False)


def _rows(
    radius_km: float, dist_km: float, latitude_range: tuple[float, float]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The grid's rows within ``latitude_range``, south to north: their signed numbers and latitudes.

    Rows: linspace(-90, 90, n + 1)[:-1] wrapped into [-90, 90). Index i of the linspace becomes row i (U) when
    it wraps, and row i - n (D) otherwise.
    """
    n = math.ceil(math.pi * radius_km / dist_km)
    raw = np.arange(n, dtype=np.float64) * (180.0 / n) + (-90.0)
    row_u = np.where(raw < 0, np.arange(n), np.arange(n) - n)
    lat = np.mod(raw, 180.0) - 90.0
    keep = (lat >= latitude_range[0]) & (lat <= latitude_range[1])
    order = np.argsort(row_u[keep], kind="stable")
    return row_u[keep][order].astype(np.int64), lat[keep][order]


class MajorTomGrid:
    """Major TOM grid at any spacing.

    Cells are addressed by signed integers: ``row_u`` (``454U`` → 454, ``1D`` → -1) and ``col_r``
    (``120R`` → 120, ``1L`` → -1). All methods take and return numpy arrays.
    """

    def __init__(
        self,
        dist_km: float = 10.0,
        *,
        radius_km: float = RADIUS_EQUATOR_KM,
        latitude_range: tuple[float, float] = (-85.0, 85.0),
        margin_m: float = 340.0,
    ):
        if not MIN_DISTANCE_KM <= dist_km <= MAX_DISTANCE_KM:  # finer: millions of rows; coarser: hardly two
            raise ValueError(f"grid distance must be {MIN_DISTANCE_KM:g} to {MAX_DISTANCE_KM:g} km, got {dist_km:g}")
        self.dist_km = float(dist_km)
        self.radius_km = float(radius_km)
        self.latitude_range = (float(latitude_range[0]), float(latitude_range[1]))
        self.margin_m = float(margin_m)

        self.row_u, self.row_lat = _rows(self.radius_km, self.dist_km, self.latitude_range)
        if self.row_u.size < 2:
            raise ValueError(f"grid distance {dist_km} km leaves fewer than two rows in {latitude_range}")
        self._row_offset = int(self.row_u[0])  # row index = row_u - offset

        # Columns per row, with Python's math functions exactly as the reference evaluates them.
        self.n_cols: NDArray[np.int64] = np.array(
            [
                math.ceil(2 * math.pi * (self.radius_km * math.cos(lat * math.pi / 180)) / self.dist_km)
                for lat in self.row_lat
            ],
            dtype=np.int64,
        )
        # Columns run from n_east - n_cols (westmost, L) to n_east - 1 (eastmost, R), where n_east
        # counts the linspace values below 0, which wrap to [0, 180).
        half = self.n_cols // 2
        self.n_east: NDArray[np.int64] = half + (half * (360.0 / self.n_cols) + (-180.0) < 0)

    # ----------------------------------------------------------------------------------- shape

    @property
    def n_rows(self) -> int:
        """The grid's rows of cells, pole to pole."""
        return int(self.row_u.size)

    @property
    def n_cells(self) -> int:
        """The grid's cells, all rows together."""
        return int(self.n_cols.sum())

    def row_index(self, row_u: ArrayLike) -> NDArray[np.int64]:
        """Position of each signed row in ``self.row_u``; raises for rows outside the grid."""
        idx = np.asarray(row_u, dtype=np.int64) - self._row_offset
        if np.any((idx < 0) | (idx >= self.n_rows)):
            raise CellNameError("row outside the grid")
        return idx

    def contains(self, row_u: ArrayLike, col_r: ArrayLike) -> NDArray[np.bool_]:
        """Whether each (row, col) names a cell of this grid."""
        row_u, col_r = np.broadcast_arrays(np.asarray(row_u, np.int64), np.asarray(col_r, np.int64))
        idx = row_u - self._row_offset
        ok = (idx >= 0) & (idx < self.n_rows)
        safe = np.where(ok, idx, 0)
        return ok & (col_r >= self.n_east[safe] - self.n_cols[safe]) & (col_r < self.n_east[safe])

    # ------------------------------------------------------------------------------- geometry

    def _col_lon(self, idx: NDArray[np.int64], col_r: NDArray[np.int64]) -> NDArray[np.float64]:
        """Longitude of column ``col_r`` in row ``idx``, the reference's float for that column."""
        n = self.n_cols[idx]
        k = np.where(col_r >= 0, col_r, col_r + n)
        return np.mod(k * (360.0 / n) + (-180.0), 360.0) - 180.0

    def grid_point(self, row_u: ArrayLike, col_r: ArrayLike) -> tuple[NDArray, NDArray]:
        """(lat, lon) of the cells' grid points, their bottom-left corners."""
        row_u, col_r = np.broadcast_arrays(np.asarray(row_u, np.int64), np.asarray(col_r, np.int64))
        idx = self.row_index(row_u)
        return self.row_lat[idx], self._col_lon(idx, col_r)

    def bounds(self, row_u: ArrayLike, col_r: ArrayLike) -> tuple[NDArray, NDArray, NDArray, NDArray]:
        """(west, south, east, north) of each cell in degrees.

        The top row's height is the one below it and the eastmost column's width the one to its west,
        as in the reference's ``get_bounded_footprint``.
        """
        row_u, col_r = np.broadcast_arrays(np.asarray(row_u, np.int64), np.asarray(col_r, np.int64))
        idx = self.row_index(row_u)
        south = self.row_lat[idx]
        top = idx == self.n_rows - 1
        north = np.where(
            top,
            south + (south - self.row_lat[np.maximum(idx - 1, 0)]),
            self.row_lat[np.minimum(idx + 1, self.n_rows - 1)],
        )
        west = self._col_lon(idx, col_r)
        last = col_r == self.n_east[idx] - 1
        east = np.where(
            last,
            west + (west - self._col_lon(idx, col_r - 1)),
            self._col_lon(idx, np.where(last, col_r, col_r + 1)),
        )
        return west, south, east, north

    def centre(self, row_u: ArrayLike, col_r: ArrayLike) -> tuple[NDArray, NDArray]:
        """(lat, lon) of the middle of each cell in latitude and longitude."""
        west, south, east, north = self.bounds(row_u, col_r)
        return (south + north) / 2, (west + east) / 2

    # ------------------------------------------------------------------------------ locating

    def locate(self, lat: ArrayLike, lon: ArrayLike) -> tuple[NDArray, NDArray, NDArray]:
        """Cells containing points: ``(row_u, col_r, inside)``.

        ``inside`` is False for points the grid does not cover (NaN, on or below the lowest row, above
        the top row's top edge); their row/col are 0. Longitudes must be within [-180, 180].
        """
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        lat, lon = np.broadcast_arrays(lat, lon)
        with np.errstate(invalid="ignore"):
            bad_lon = np.abs(lon) > 180
        if np.any(bad_lon):
            raise ValueError(f"longitude outside [-180, 180]: {lon[bad_lon][:3].tolist()}")

        idx = np.searchsorted(self.row_lat, lat, side="left") - 1
        top_edge = self.row_lat[-1] + (self.row_lat[-1] - self.row_lat[-2])
        inside = (idx >= 0) & (lat <= top_edge) & np.isfinite(lon)
        idx = np.where(inside, np.minimum(idx, self.n_rows - 1), 0)
        lon = np.where(inside, lon, 0.0)

        n, n_east = self.n_cols[idx], self.n_east[idx]
        west_col, east_col = n_east - n, n_east - 1
        # Estimate from the nominal spacing, then settle on the reference's searchsorted answer: the
        # last column whose longitude is strictly below the point (west_col - 1 meaning "none").
        col = np.clip(np.floor(lon / (360.0 / n)).astype(np.int64), west_col - 1, east_col)
        for _ in range(8):
            down = (col >= west_col) & (lon <= self._col_lon(idx, np.maximum(col, west_col)))
            nxt = np.minimum(col + 1, east_col)
            up = ~down & (col < east_col) & (lon > self._col_lon(idx, nxt))
            if not (down.any() or up.any()):
                break
            col = col - down + up
        else:  # pragma: no cover - the estimate is within one column of the answer
            raise RuntimeError("column search did not converge")
        col = np.where(col < west_col, east_col, col)  # searchsorted - 1 == -1 wraps to the last column
        row = np.where(inside, self.row_u[idx], 0)
        return row, np.where(inside, col, 0), inside

    # ---------------------------------------------------------------------------- enumerating

    def all_cells(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Every cell of the grid as (row_u, col_r), south to north, west to east."""
        return self._row_ranges(np.arange(self.n_rows), self.n_east - self.n_cols, self.n_east - 1)

    def cells_in_bbox(
        self, west: float, south: float, east: float, north: float
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Cells whose area overlaps the box (touching an edge is not overlapping), sorted.

        A box with ``west > east`` crosses the antimeridian. The eastmost cell of a row may reach past
        180° (rows with an odd number of columns); its part beyond counts from -180°.
        """
        if west > east:
            parts = [self.cells_in_bbox(west, south, 180.0, north), self.cells_in_bbox(-180.0, south, east, north)]
            return unique_cells(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        idx, lo, hi = self.column_ranges_in_bbox(west, south, east, north)
        rows, cols = self._row_ranges(idx, lo, hi)
        rows = np.concatenate([rows, self.row_u[idx]])  # the eastmost cells, for their wrapped part
        cols = np.concatenate([cols, self.n_east[idx] - 1])
        w, _, e, _ = self.bounds(rows, cols)
        keep = ((w < east) & (e > west)) | ((w - 360 < east) & (e - 360 > west))
        return unique_cells(rows[keep], cols[keep])

    def count_in_bbox(self, west: float, south: float, east: float, north: float) -> int:
        """At least as many cells as :meth:`cells_in_bbox` finds (a few more per row), counted without listing
        them: how big a plan would be before it is made."""
        if west > east:
            return self.count_in_bbox(west, south, 180.0, north) + self.count_in_bbox(-180.0, south, east, north)
        idx, lo, hi = self.column_ranges_in_bbox(west, south, east, north)
        return int(np.maximum(hi - lo + 1, 0).sum()) + idx.size

    def column_ranges_in_bbox(
        self, west: float, south: float, east: float, north: float
    ) -> tuple[NDArray, NDArray, NDArray]:
        """Row indices whose band overlaps [south, north], and in each the column range that may reach the box."""
        north_edges = self.bounds(self.row_u, self.n_east - self.n_cols)[3]
        idx = np.flatnonzero((self.row_lat < north) & (north_edges > south))
        n, n_east = self.n_cols[idx], self.n_east[idx]
        step = 360.0 / n
        lo = np.maximum(np.floor(west / step).astype(np.int64) - 1, n_east - n)
        hi = np.minimum(np.floor(east / step).astype(np.int64) + 1, n_east - 1)
        return idx, lo, hi

    def _row_ranges(self, idx: NDArray, lo: NDArray, hi: NDArray) -> tuple[NDArray, NDArray]:
        """All (row_u, col_r) with col_r in [lo, hi] for each row index in ``idx``."""
        counts = np.maximum(hi - lo + 1, 0)
        rows = np.repeat(self.row_u[idx], counts)
        starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        cols = starts + np.arange(int(counts.sum()), dtype=np.int64)
        return rows, cols

    # -------------------------------------------------------------------------------- naming

    @staticmethod
    def names(row_u: ArrayLike, col_r: ArrayLike) -> NDArray[np.object_]:
        """Cell names such as ``454U_120R``, as an object array of str."""
        row_u = np.atleast_1d(np.asarray(row_u, dtype=np.int64))
        col_r = np.atleast_1d(np.asarray(col_r, dtype=np.int64))
        if row_u.size == 0:
            return np.array([], dtype=object)
        # Format each distinct row and column once and join by lookup: millions of cells in under a second.
        r0, c0 = int(row_u.min()), int(col_r.min())
        rows = np.array([f"{abs(r)}{'U' if r >= 0 else 'D'}_" for r in range(r0, int(row_u.max()) + 1)], object)
        cols = np.array([f"{abs(c)}{'R' if c >= 0 else 'L'}" for c in range(c0, int(col_r.max()) + 1)], object)
        return rows[row_u - r0] + cols[col_r - c0]

    def parse(self, names: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Signed (row_u, col_r) of cell names; raises :class:`CellNameError` naming the first bad one."""
        rows, cols = [], []
        for name in map(str, np.atleast_1d(np.asarray(names, dtype=str))):
            match = CELL_NAME.match(name)
            if not match or match[2] == "D" and int(match[1]) == 0 or match[4] == "L" and int(match[3]) == 0:
                raise CellNameError(f"{name!r} is not a cell name like '454U_120R' (there is no 0D or 0L)")
            rows.append(int(match[1]) * (1 if match[2] == "U" else -1))
            cols.append(int(match[3]) * (1 if match[4] == "R" else -1))
        row_u, col_r = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
        missing = ~self.contains(row_u, col_r)
        if missing.any():
            bad = str(np.atleast_1d(np.asarray(names, dtype=str))[missing][0])
            raise CellNameError(f"{bad!r} is not in the {self.dist_km:g} km grid")
        return row_u, col_r

    # ----------------------------------------------------------------------------------- UTM

    def utm_epsg(self, row_u: ArrayLike, col_r: ArrayLike) -> NDArray[np.int64]:
        """EPSG code of the UTM zone of each cell's grid point (Norway/Svalbard exceptions applied)."""
        lat, lon = self.grid_point(row_u, col_r)
        return utm_epsg(lat, lon)

    @property
    def footprint_m(self) -> float:
        """Side of the UTM sample footprint: the cell plus the margin on each side (10,680 m at 10 km)."""
        return self.dist_km * 1000.0 + 2 * self.margin_m

    def footprints(self, row_u: ArrayLike, col_r: ArrayLike) -> Footprints:
        """UTM sample footprints: from the projected grid point minus the margin, ``footprint_m`` up and right.

        This is how Major TOM Core cut its samples (1068 × 1068 px at 10 m for the 10 km grid); the
        corner is not snapped to any pixel grid here, readers align it to their source's pixels.
        """
        lat, lon = self.grid_point(row_u, col_r)
        epsg = utm_epsg(lat, lon)
        x, y = transform_by_zone(epsg, lon, lat, to_utm=True)
        xmin, ymin = x - self.margin_m, y - self.margin_m
        return Footprints(epsg, xmin, ymin, xmin + self.footprint_m, ymin + self.footprint_m)


def transform_by_zone(
    epsg: NDArray[np.int64], a: NDArray[np.float64], b: NDArray[np.float64], *, to_utm: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Coordinates moved between lon/lat and each point's own UTM zone ``epsg``, one transformer per zone."""
    x, y = np.empty_like(a, dtype=np.float64), np.empty_like(b, dtype=np.float64)
    for code in np.unique(epsg):
        sel = epsg == code
        src, dst = (4326, int(code)) if to_utm else (int(code), 4326)
        x[sel], y[sel] = _transformer(src, dst).transform(a[sel], b[sel])
    return x, y


@functools.lru_cache(maxsize=512)  # 120 UTM zones each way: a plan made in thousands of bands makes each once
def _transformer(src: int, dst: int):
    from pyproj import Transformer  # thread-safe since pyproj 3.1: one object serves every thread

    return Transformer.from_crs(src, dst, always_xy=True)


def utm_epsg(lat: ArrayLike, lon: ArrayLike) -> NDArray[np.int64]:
    """EPSG code (326xx north, 327xx south) of the UTM zone of points, with the Norway/Svalbard zones."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    zone = np.floor((lon + 180) / 6).astype(np.int64) % 60 + 1
    zone = np.where((lat >= 56) & (lat < 64) & (lon >= 3) & (lon < 12), 32, zone)
    svalbard = (lat >= 72) & (lat < 84)
    for west, east, svalbard_zone in ((0, 9, 31), (9, 21, 33), (21, 33, 35), (33, 42, 37)):
        zone = np.where(svalbard & (lon >= west) & (lon < east), svalbard_zone, zone)
    return np.where(lat < 0, 32700, 32600) + zone


def unique_cells(rows: ArrayLike, cols: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Distinct (row_u, col_r) pairs, sorted south to north and west to east."""
    pairs = np.unique(np.stack([np.asarray(rows, np.int64), np.asarray(cols, np.int64)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]
