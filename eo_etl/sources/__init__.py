"""Where pixels come from: collection profiles, and the STAC, Earth Engine and local sources."""
