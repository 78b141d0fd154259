"""Run by check_wheel.sh after ``eo-etl demo --out out`` in a folder outside the checkout, with the Python of
the virtual environment that holds the wheel and ``[all]``: the dataset the demo built opens with the readers
users have, and they agree on the pixels (Zarr through xarray, the TACO's COGs, the video cubes, Major TOM's
parquets, PyTorch)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import rasterio
import tacoreader
from rasterio.io import MemoryFile

import eo_etl
from eo_etl.store.torch_dataset import SampleDataset
from eo_etl.store.video import read_cube

ROOT = Path("out/demo")
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12", "SCL"]

assert "site-packages" in eo_etl.__file__, eo_etl.__file__
index = gpd.read_parquet(ROOT / "index.parquet")
# 12 Sentinel-2 samples, and the MODIS land cover aligned to each (the wheel check installs MCD12C1 first)
assert index.source.value_counts().to_dict() == {"s2l2a": 12, "landcover": 12}, index.source.value_counts()
assert (index.status == "ok").all(), index[["grid_cell", "status", "reason"]]
ds = eo_etl.open_dataset(ROOT, "s2l2a")
assert dict(ds.sizes) == {"sample": 12, "band": 7, "y": 64, "x": 64}, dict(ds.sizes)
assert list(ds.band.values) == BANDS
pixels = {str(cell): ds.pixels.sel(sample=cell).values for cell in ds.sample.values}
full = index.loc[(index.source == "s2l2a") & (index.nodata == 0), "grid_cell"]
assert len(full) > 0 and all((pixels[cell][:6] > 0).all() for cell in full)  # real reflectances, no gaps

taco = [path for path in (ROOT / "taco" / "s2l2a").iterdir() if path.suffix == ".tacozip"]
rows = [row for path in taco for row in tacoreader.load(str(path)).data.to_arrow().to_pylist()]
cell_of = dict(zip(index.sample_id, index.grid_cell, strict=True))  # TACO's id is the sample id
assert sorted(cell_of[row["id"]] for row in rows) == sorted(pixels)
for row in rows:
    with rasterio.open(row["internal:gdal_vsi"]) as src:
        np.testing.assert_array_equal(src.read(), pixels[cell_of[row["id"]]])

for row in index[index.source == "s2l2a"].itertuples():
    cube = read_cube(ROOT / row.video_path, frames=[int(row.video_frame)])
    np.testing.assert_array_equal(cube[0], pixels[row.grid_cell])  # lossless by default

majortom = ROOT / "majortom" / "s2l2a"
metadata = pq.read_table(majortom / "metadata.parquet").to_pylist()
assert sorted(row["grid_cell"] for row in metadata) == sorted(pixels)
for row in metadata:  # as Major TOM's read_row reads Core: the row group, then each band's GeoTIFF
    group = pq.ParquetFile(majortom / row["parquet_url"]).read_row_group(row["parquet_row"])
    for b, band in enumerate(BANDS):
        with MemoryFile(group[band][0].as_py()) as memory, memory.open() as src:
            np.testing.assert_array_equal(src.read(1), pixels[row["grid_cell"]][b])

data = SampleDataset(str(ROOT), "s2l2a", bands=["B04", "B03", "B02"])
item = data[0]
assert len(data) == 12 and tuple(item["pixels"].shape) == (3, 64, 64) and str(item["pixels"].dtype) == "torch.float32"
labelled = SampleDataset(str(ROOT), "s2l2a", stages=["landcover"], masks=["landcover.class"])[0]
assert labelled["landcover"]["majority_code"] == 7 and tuple(labelled["masks"]["landcover.class"].shape) == (64, 64)
print(
    f"ok  the demo dataset: 12 samples agree in Zarr, {len(taco)} TACO file(s), video cubes, Major TOM parquets; "
    "PyTorch reads it with its land-cover labels"
)
