"""A literal, per-point restatement of the algorithm of ESA's Major TOM ``grid.py``, as a test oracle.

It follows the reference step by step, with none of our shortcuts: each row is a sorted, wrapped
``np.linspace``; rows and columns are named by their position around the zero value; a point is mapped
with ``np.searchsorted`` (minus one, with Python's negative index wrapping); a cell's bounds follow
``get_bounded_footprint``; the UTM zone follows ``get_utm_zone_from_latlng``. Slow on purpose: it is
what the vectorised grid must agree with, and the baseline ``bench/grid.py`` measures against.
"""

from __future__ import annotations

import math

import numpy as np

RADIUS = 6378.137


class ReferenceGrid:
    def __init__(self, dist: float, latitude_range=(-85.0, 85.0)):
        self.dist = dist
        n_div = math.ceil(math.pi * RADIUS / dist)
        lats = np.sort(np.mod(np.linspace(-90, 90, n_div + 1)[:-1], 180) - 90)
        zero = int(np.searchsorted(lats, 0))
        names = [f"{i - zero}U" if i >= zero else f"{zero - i}D" for i in range(len(lats))]
        keep = (lats >= latitude_range[0]) & (lats <= latitude_range[1])
        self.lats = lats[keep]
        self.rows = [name for name, kept in zip(names, keep) if kept]
        self._cols: dict[int, tuple[np.ndarray, list[str]]] = {}

    def row(self, r: int) -> tuple[np.ndarray, list[str]]:
        """Sorted longitudes and column names of row index ``r``."""
        if r not in self._cols:
            lat = self.lats[r]
            radius_at_lat = RADIUS * math.cos(lat * math.pi / 180)
            n = math.ceil(2 * math.pi * radius_at_lat / self.dist)
            lons = np.sort(np.mod(np.linspace(-180, 180, n + 1)[:-1], 360) - 180)
            zero = int(np.where(lons == 0)[0][0])
            cols = [f"{j - zero}R" if j >= zero else f"{zero - j}L" for j in range(len(lons))]
            self._cols[r] = (lons, cols)
        return self._cols[r]

    def locate(self, lat: float, lon: float) -> str:
        r = int(np.searchsorted(self.lats, lat)) - 1
        lons, cols = self.row(r)
        c = int(np.searchsorted(lons, lon)) - 1
        return f"{self.rows[r]}_{cols[c]}"

    def point(self, name: str) -> tuple[int, int, float, float]:
        """Row index, column index, lat and lon of a named grid point."""
        row, col = name.split("_")
        r = self.rows.index(row)
        lons, cols = self.row(r)
        c = cols.index(col)
        return r, c, float(self.lats[r]), float(lons[c])

    def bounds(self, name: str) -> tuple[float, float, float, float]:
        """(west, south, east, north) as ``get_bounded_footprint`` draws them."""
        r, c, bottom, left = self.point(name)
        if r + 1 >= len(self.lats):
            top = self.lats[r] + (self.lats[r] - self.lats[r - 1])
        else:
            top = self.lats[r + 1]
        lons, _ = self.row(r)
        if c + 1 > len(lons) - 1:
            right = lons[c] + (lons[c] - lons[c - 1])
        else:
            right = lons[c + 1]
        return left, bottom, float(right), float(top)

    def utm_epsg(self, name: str) -> int:
        _, _, lat, lon = self.point(name)
        return utm_epsg_of(lat, lon)


def utm_epsg_of(lat: float, lon: float) -> int:
    """``get_utm_zone_from_latlng`` of the reference, as an integer EPSG code."""
    zone = (math.floor((lon + 180) / 6)) % 60 + 1
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat < 84.0:
        if 0.0 <= lon < 9.0:
            zone = 31
        elif 9.0 <= lon < 21.0:
            zone = 33
        elif 21.0 <= lon < 33.0:
            zone = 35
        elif 33.0 <= lon < 42.0:
            zone = 37
    return int(f"327{zone:02d}" if lat < 0 else f"326{zone:02d}")
