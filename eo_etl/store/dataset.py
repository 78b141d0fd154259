"""Writing a built dataset: samples in, the dataset folder out.

    <dataset>/
      index.parquet        GeoParquet, one row per (cell, source), failures included (store/index.py)
      pixels.zarr/         sharded Zarr v3, a group per source (store/zarr.py)
      video/<source>/shard-NNNNN/   video-codec cubes, a shard's samples as frames (formats: video)
      taco/<name>.tacozip  TACO export of the stored samples (formats: taco)
      collection.json, items.parquet   STAC Collection and one STAC item per stored sample (stac-geoparquet)
      plan.parquet, recipe.json        the cells planned and the recipe as resolved

Samples arrive in plan order; each source's ok samples fill shards of ``shard_size`` in that order, so
the same build gives the same positions and bytes. A shard is written once it is full, and its pixels
are dropped from memory; the index, the STAC files and the exports are written last, so a dataset
whose index exists is complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np

from eo_etl.recipe import Recipe
from eo_etl.sample import OK, Sample
from eo_etl.sources.profile import find_profile
from eo_etl.store.catalog import write_catalog
from eo_etl.store.index import INDEX_NAME, index_frame, write_index
from eo_etl.store.zarr import STORE_NAME, PixelLayout, ZarrWriter


@dataclass
class _SourceShards:
    """One source's shards: the writer, the samples of the shard being filled, and how many came before."""

    writer: ZarrWriter
    pending: list[tuple[Sample, dict]] = field(default_factory=list)
    shard: int = 0
    stored: int = 0


class DatasetWriter:
    def __init__(self, root: Path, recipe: Recipe, cells: gpd.GeoDataFrame):
        self.root, self.recipe, self.cells = Path(root), recipe, cells
        self.shard_size = recipe.outputs.shard_size
        self.records: list[dict] = []
        self.sources: dict[str, _SourceShards] = {}
        self.recipe_hash = recipe.fingerprint()

    def add(self, sample: Sample) -> None:
        """Record ``sample``; an ok one joins its source's current shard, written when full."""
        record = sample.record() | {"recipe_hash": self.recipe_hash}
        self.records.append(record)
        if sample.status != OK:
            return
        shards = self.sources.get(sample.source) or self._open(sample)
        shards.pending.append((sample, record))
        if len(shards.pending) == self.shard_size:
            self._flush(shards)

    def _open(self, sample: Sample) -> _SourceShards:
        layout = PixelLayout.of(sample)
        writer = ZarrWriter(
            self.root / STORE_NAME, sample.source, layout, capacity=len(self.cells), shard_size=self.shard_size,
            build=self.recipe_hash,
        )  # fmt: skip
        self.sources[sample.source] = shards = _SourceShards(writer)
        return shards

    def _flush(self, shards: _SourceShards) -> None:
        if not shards.pending:
            return
        samples = [sample for sample, _ in shards.pending]
        shards.writer.write_shard(shards.shard, samples)
        video = self._write_video(shards.shard, samples) if "video" in self.recipe.outputs.formats else None
        for i, (sample, record) in enumerate(shards.pending):
            record["zarr_group"], record["zarr_index"] = sample.source, shards.stored + i
            if video is not None:
                record["video_path"], record["video_frame"] = video.relative_to(self.root).as_posix(), i
            sample.pixels = None  # written: let the memory go
        shards.stored += len(samples)
        shards.shard += 1
        shards.pending.clear()

    def _write_video(self, shard: int, samples: list[Sample]) -> Path:
        from eo_etl.store.video import VideoOptions, write_cube  # the video extra

        source = samples[0].source
        folder = self.root / "video" / source / f"shard-{shard:05d}"
        options = self.recipe.outputs.video
        write_cube(
            folder, np.stack([s.pixels for s in samples]), samples[0].bands, masks=self._masks(source),
            nodata=samples[0].nodata,
            options=VideoOptions(lossy=options.lossy, crf=options.crf, keyframe_interval=options.keyframe_interval),
        )  # fmt: skip
        return folder

    def _masks(self, source: str) -> set[str]:
        """Bands the profile calls masks (SCL, QA_PIXEL): lossless in every video mode."""
        spec = next(s for s in self.recipe.sources if s.name == source)
        profile = find_profile(spec.profile)
        return {band for band in spec.bands if profile and profile.bands[band].role == "mask"}

    def close(self) -> gpd.GeoDataFrame:
        """Write the last partial shards, the STAC files and the exports, then the index; return the index."""
        for shards in self.sources.values():
            self._flush(shards)
            shards.writer.close(shards.stored)
        index = index_frame(self.records, self.cells)
        statistics = {source: shards.writer.statistics.as_dict() for source, shards in self.sources.items()}
        write_catalog(self.root, index, self.recipe, statistics)
        if "taco" in self.recipe.outputs.formats:
            self._write_taco(index)
        write_index(index, self.root / INDEX_NAME)
        return index

    def _write_taco(self, index: gpd.GeoDataFrame) -> None:
        """A TACO per source, from what the Zarr store holds (one sample's pixels at a time)."""
        from eo_etl.store.read import read_samples  # reading the store back, only for exports
        from eo_etl.store.taco import write_taco  # the taco extra

        recipe = self.recipe
        for source in self.sources:
            write_taco(
                self.root / "taco" / source, read_samples(self.root, source, index=index),
                dataset_id=re.sub(r"[^a-z0-9_-]", "-", f"{recipe.name}-{source}".lower()),
                description=recipe.description, licenses=(recipe.publish.license if recipe.publish else "other",),
                overwrite=True,
            )  # fmt: skip
