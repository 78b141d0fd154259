"""Labels per sample, each a stage after the store: land cover (landcover) and OpenStreetMap (osm)."""
