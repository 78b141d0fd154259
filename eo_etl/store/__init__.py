"""Where samples go: the dataset folder (``dataset.py`` has its layout) — the Zarr pixel store, the GeoParquet
index, STAC, TACO and video exports — and the readers that open it."""
