"""Where pixels come from: collection profiles, and the STAC, Earth Engine and local sources."""

SEARCH_BATCH = 64  # cells per catalogue search: a batch acquired at once, and the most a range of the plan holds
