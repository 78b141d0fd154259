"""The pixel grid of one sample: where a cell's patch lies in its UTM zone, aligned to the source's pixels."""

from __future__ import annotations

from dataclasses import dataclass

from affine import Affine


@dataclass(frozen=True)
class PatchGrid:
    epsg: int
    transform: Affine
    width: int
    height: int

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def resolution(self) -> float:
        return self.transform.a

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in metres."""
        x0, y1 = self.transform.c, self.transform.f
        return x0, y1 + self.transform.e * self.height, x0 + self.transform.a * self.width, y1


def patch_grid(
    epsg: int,
    footprint: tuple[float, float, float, float],
    resolution: float,
    size: int,
    anchor: tuple[float, float] = (0.0, 0.0),
) -> PatchGrid:
    """A ``size`` × ``size`` grid of ``resolution`` metre pixels centred on ``footprint`` (xmin, ymin, xmax, ymax).

    The corner is rounded to the lattice through ``anchor`` (a corner of the source's own pixels), so a
    source in the same zone at the same resolution is cut without resampling, as Major TOM Core was.
    At the defaults (1068 px at 10 m on the 10 km grid) the patch is the footprint itself.
    """
    xmin, ymin, xmax, ymax = footprint
    half = size * resolution / 2
    ax, ay = anchor
    x0 = ax + round(((xmin + xmax) / 2 - half - ax) / resolution) * resolution
    y1 = ay + round(((ymin + ymax) / 2 + half - ay) / resolution) * resolution
    return PatchGrid(int(epsg), Affine(resolution, 0.0, x0, 0.0, -resolution, y1), size, size)
