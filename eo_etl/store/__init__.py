"""Where samples go: per-sample GeoTIFFs and the sample index for now; Zarr, TACO and video later."""
