"""Labels joined to stored samples: OpenStreetMap tags, geometry statistics and masks (``osm``), land cover."""
