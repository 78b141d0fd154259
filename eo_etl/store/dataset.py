"""Writing a built dataset: shards of samples in, the dataset folder out.

    <dataset>/
      index.parquet        GeoParquet, one row per (cell, source, version), failures included (store/index.py)
      pixels.zarr/         sharded Zarr v3, a group per source (store/zarr.py)
      video/<source>/shard-NNNNN/   video-codec cubes, a shard's samples as frames (formats: video)
      taco/<source>/       TACO export of the stored samples (formats: taco)
      majortom/<source>/   Major TOM Core's layout: images/part_NNNNN.parquet per shard, metadata.parquet
                           (formats: majortom; store/majortom.py)
      collection.json, items.parquet   STAC Collection and one STAC item per stored sample (stac-geoparquet)
      plan.parquet, recipe.json        the cells planned and the recipe as resolved
      _build/, _build.lock             the build's state (pipeline/state.py); while it runs, its lock (lock.py)

The folder may be local or an object store's prefix (``s3://…``, ``gs://…``: store/location.py); video
cubes and TACO are written in a local scratch folder there and uploaded.

Each source's ok samples have fixed positions (plan order, version after version) and fill shards of
``shard_size`` in that order, so the same build gives the same positions and bytes. Shards are written
independently (by any process, in any order, each in one put); the index, the STAC files and the
exports are written last (``close_dataset``, then the index), so a dataset whose index exists is complete.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from eo_etl.recipe import Recipe
from eo_etl.sample import Sample
from eo_etl.sources.profile import find_profile
from eo_etl.store.catalog import write_catalog
from eo_etl.store.index_batches import Index, index_batches
from eo_etl.store.index_row import SAMPLE_COLUMNS
from eo_etl.store.location import Location
from eo_etl.store.zarr import STORE_NAME, BandStatistics, PixelLayout, ZarrWriter

Root = Location | Path | str  # the dataset folder: a path or a URL
PIXELS_AT_ONCE = 64 << 20  # bytes of consecutive samples' pixels an export reads back at once


def open_pixel_store(root: Root, recipe: Recipe, sample: Sample, capacity: int) -> ZarrWriter:
    """Create (or resume, growing it to ``capacity``) the group of ``sample``'s source, shaped like it."""
    store = Location.of(root) / STORE_NAME
    return ZarrWriter(
        store.url, sample.source, PixelLayout.of(sample), capacity=capacity, shard_size=recipe.outputs.shard_size,
        build=recipe.series_fingerprint(), storage_options=store.storage_options,
    )  # fmt: skip


def existing_pixel_store(root: Root, source: str, *, tidy: bool = False) -> ZarrWriter:
    """A writer of ``source``'s group as created (FileNotFoundError or KeyError when there is none)."""
    store = Location.of(root) / STORE_NAME
    return ZarrWriter.existing(store.url, source, tidy=tidy, storage_options=store.storage_options)


def write_shard(root: Root, recipe: Recipe, writer: ZarrWriter, k: int, samples: Sequence[Sample]) -> list[str]:
    """Shard ``k`` of a source in every format the recipe asks for (the one place a shard's formats are chosen);
    what its writing has to warn of, one line each (the video cube, stored lossless: why)."""
    writer.write_shard(k, samples)
    if "majortom" in recipe.outputs.formats:
        _write_majortom_part(Location.of(root), recipe, k, samples)
    if "video" not in recipe.outputs.formats:
        return []
    folder = f"video/{samples[0].source}/shard-{k:05d}"
    fallback = _write_video(Location.of(root) / folder, recipe, samples)
    return [f"{folder}: outputs.video.{fallback['reason']}"] if fallback else []


def _write_video(folder: Location, recipe: Recipe, samples: Sequence[Sample]) -> dict | None:
    """The shard's cube; the sidecar's ``fallback`` when a target PSNR out of reach made it lossless (the build
    goes on: eo_etl/store/video.py says why)."""
    from eo_etl.store.video import SIDECAR, VideoOptions, write_cube  # the video extra

    source = samples[0].source
    options = recipe.outputs.video
    with folder.staged_folder(last=(SIDECAR,)) as path:  # the sidecar says a cube is complete: it goes last
        sidecar = write_cube(
            path, np.stack([s.pixels for s in samples]), samples[0].bands, masks=_masks(recipe, source),
            nodata=samples[0].nodata,
            options=VideoOptions(lossy=options.lossy, crf=options.crf, keyframe_interval=options.keyframe_interval,
                                 target_psnr_db=options.target_psnr_db, out_of_reach="lossless"),
        )  # fmt: skip
    return sidecar["fallback"]


def _write_majortom_part(root: Location, recipe: Recipe, k: int, samples: Sequence[Sample]) -> None:
    from eo_etl.store.majortom import FOLDER, write_part  # the majortom extra

    source = samples[0].source
    write_part(root / FOLDER / source, k, samples, _profile(recipe, source))


def _profile(recipe: Recipe, source: str):
    spec = next(s for s in recipe.sources if s.name == source)
    return find_profile(spec.profile)


def _masks(recipe: Recipe, source: str) -> set[str]:
    """Bands of codes, not measurements (masks such as SCL, QA_PIXEL; class maps): lossless in every video mode."""
    spec = next(s for s in recipe.sources if s.name == source)
    profile = find_profile(spec.profile)
    return {band for band in spec.bands if profile and profile.bands[band].categorical}


def close_dataset(root: Root, recipe: Recipe, index: Index, stored: dict[str, tuple[int, BandStatistics]]):
    """The dataset closed but for its index (which the caller writes last: pipeline.transforms.finish): the stores
    closed, STAC, exports.
    ``index``: the index in memory, or where it is written; the exports read it a batch of rows at a time."""
    root = Location.of(root)
    for source, (count, statistics) in stored.items():
        existing_pixel_store(root, source, tidy=True).close(count, statistics)
        _remove_video_shards_from(root / "video" / source, -(-count // recipe.outputs.shard_size))
    write_catalog(root, index, recipe, {source: statistics.as_dict() for source, (_, statistics) in stored.items()})
    if "taco" in recipe.outputs.formats:
        _write_taco(root, recipe, index, list(stored))
    if "majortom" in recipe.outputs.formats:
        from eo_etl.store.majortom import FOLDER, write_metadata  # the majortom extra

        for source in stored:
            write_metadata(root / FOLDER / source, index, source, recipe.outputs.shard_size)


def _remove_video_shards_from(folder: Location, first: int) -> None:
    """Cubes of shards past the end of a store that shrank (a rebuild with fewer samples)."""
    for shard in folder.glob("shard-*"):
        if int(shard.name.removeprefix("shard-")) >= first:
            shard.remove(recursive=True)


def _write_taco(root: Location, recipe: Recipe, index: Index, sources: list[str]) -> None:
    """A TACO per source, from what the Zarr store holds (one sample's pixels at a time)."""
    from eo_etl.store.taco import write_taco  # the taco extra

    for source in sources:
        with (root / "taco" / source).staged_folder(last=(".tacocat",)) as path:  # what tacoreader.load finds
            write_taco(
                path, stored_samples(root, source, index),
                dataset_id=re.sub(r"[^a-z0-9_-]", "-", f"{recipe.name}-{source}".lower()),
                description=recipe.description, licenses=(recipe.publish.license if recipe.publish else "other",),
                overwrite=True,
            )  # fmt: skip


def stored_samples(root: Location, source: str, index: Index, batch_size: int | None = None) -> Iterator[Sample]:
    """``source``'s stored samples with their pixels, in the index's order, read a batch of index rows at a time (the
    columns a sample is made of) and the pixels of consecutive samples together, ``PIXELS_AT_ONCE`` bytes at most
    (a TACO orders its samples itself)."""
    from eo_etl.store.read import samples_at, stored_pixels, stored_rows  # reading the store back, only for exports

    pixels = stored_pixels(root.url, source, root.storage_options)
    most = max(1, PIXELS_AT_ONCE // (pixels.dtype.itemsize * math.prod(pixels.shape[1:])))
    for rows in index_batches(index, columns=[*SAMPLE_COLUMNS, "zarr_index"], batch_size=batch_size):
        yield from samples_at(pixels, stored_rows(rows, source).to_dict("records"), most)
