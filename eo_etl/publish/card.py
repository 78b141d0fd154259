"""The dataset card (``README.md`` in the dataset folder), made from the recipe and the built dataset.

Its YAML front matter is what the Hub reads: licence, task categories, tags, size category, and ``configs``
that point ``datasets.load_dataset`` (and the Hub's viewer) at the index and at every stage table beside it:
each ``<stage>.parquet`` keyed by ``sample_id`` is found by its name, so a new stage needs no change here. The
body says where the data comes from (sources and their licences), the grid, every stage with its parameters,
statistics, a coverage map and thumbnails (PNGs in ``card/``, rendered from the data), how to load it, and
a citation.

Text from the recipe is written as data: inside the YAML it goes through the YAML writer, in the body it is
kept to one printable line (``eo_etl.text.printable``) so a description cannot inject markup or front matter.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from eo_etl.plan import PLAN_NAME
from eo_etl.publish.figures import coverage_map, thumbnails
from eo_etl.recipe import Recipe
from eo_etl.sources.profile import find_profile
from eo_etl.store.catalog import COLLECTION_NAME, ITEMS_NAME, grid_prefix
from eo_etl.store.index import INDEX_NAME
from eo_etl.store.read import read_index, stored_rows
from eo_etl.store.zarr import STORE_NAME
from eo_etl.text import printable

CARD_NAME, FIGURES = "README.md", "card"
NOT_TABLES = {PLAN_NAME, ITEMS_NAME}  # parquet files beside the index that are not one row per sample
SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]  # fmt: skip


def stage_tables(root: Path) -> list[str]:
    """The tables keyed by ``sample_id`` beside the index (``labels.parquet``, ``captions.parquet``, …), by name."""
    found = []
    for path in sorted(root.glob("*.parquet")):
        if path.name in NOT_TABLES or path.name == INDEX_NAME:
            continue
        if "sample_id" in pq.read_schema(path).names:
            found.append(path.name)
    return found


def size_category(samples: int) -> str:
    return next((name for limit, name in SIZES if samples < limit), "n>1T")


def front_matter(recipe: Recipe, index: pd.DataFrame, tables: list[str]) -> dict:
    """The card's metadata, as the Hub's dataset card specification names it."""
    publish = recipe.publish
    stored = int(index.zarr_index.notna().sum())
    sources = [source.profile or source.collection for source in recipe.sources]
    tasks = publish.task_categories if publish and publish.task_categories else _tasks(tables)
    tags = ["earth-observation", "remote-sensing", "satellite-imagery", "geospatial", "major-tom", "zarr", "stac"]
    tags += [name for name in sources if name] + (publish.tags if publish else [])
    configs = [{"config_name": "index", "data_files": [{"split": "train", "path": INDEX_NAME}], "default": True}]
    configs += [{"config_name": Path(t).stem, "data_files": [{"split": "train", "path": t}]} for t in tables]
    licence = publish.license if publish else "other"
    meta = {
        "license": licence,
        "pretty_name": (publish.pretty_name if publish and publish.pretty_name else recipe.name),
        "task_categories": tasks,
        "tags": list(dict.fromkeys(tags)),
        "size_categories": [size_category(stored)],
        "configs": configs,
    }
    if licence == "other":
        meta["license_name"] = "; ".join(sorted({_licence(name)[0] for name in sources})) or "see the sources"
    return meta


def write_card(root: Path | str, recipe: Recipe) -> Path:
    """Render the figures and write ``README.md`` in the built dataset ``root``; returns the card's path."""
    root = Path(root)
    index = read_index(str(root))
    tables = stage_tables(root)
    figures = root / FIGURES
    figures.mkdir(exist_ok=True)
    pictures = [("Coverage: every planned cell by status", coverage_map(index, figures / "coverage.png"))]
    count = recipe.publish.thumbnails if recipe.publish else 8
    for source in recipe.sources:
        rows = stored_rows(index, source.name)
        made = thumbnails(root, source.name, source.profile, rows, count, figures / f"thumbnails-{source.name}.png")
        if made:
            pictures.append((f"Samples of {source.name}", made))
    meta = front_matter(recipe, index, tables)
    body = _body(root, recipe, index, tables, pictures, meta)
    card = root / "README.md"
    card.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body)
    return card


def _tasks(tables: list[str]) -> list[str]:
    tasks = ["image-feature-extraction"]
    if any(t.startswith("label") for t in tables):
        tasks += ["image-classification", "image-segmentation"]
    if any(t.startswith("caption") for t in tables):
        tasks += ["image-to-text"]
    return tasks


def _licence(collection: str | None) -> tuple[str, str | None]:
    profile = find_profile(collection) if collection else None
    return (profile.license, profile.license_url) if profile else ("see the provider", None)


def _line(text: object, limit: int = 300) -> str:
    """One printable line of recipe text for the card's body, with Markdown's special characters escaped."""
    line = printable(str(text), limit).replace("\n", " ")
    return "".join("\\" + c if c in "\\`*_{}[]<>#|!" else c for c in line)


def _body(root: Path, recipe: Recipe, index: pd.DataFrame, tables: list[str], pictures, meta: dict) -> str:
    stored = index[index.zarr_index.notna()]
    title = _line(meta["pretty_name"])
    parts = [f"# {title}\n", _line(recipe.description, 2000) or f"{title}, built by eo-etl.", ""]
    parts += [
        "## Sources\n",
        "| source | collection | bands | resolution | licence |",
        "| --- | --- | --- | --- | --- |",
    ]
    for source in recipe.sources:
        name, link = _licence(source.profile or source.collection)
        licence = f"[{_line(name)}]({link})" if link else _line(name)
        parts.append(f"| {_line(source.name)} | {_line(source.collection)} | {', '.join(source.bands)} | "
                     f"{source.resolution_m:g} m, {source.patch_size} px | {licence} |")  # fmt: skip
    parts += [
        "",
        f"The dataset itself is published under `{meta['license']}`; the sources' terms apply to the pixels.\n",
    ]
    prefix = grid_prefix(recipe.grid.distance_km)
    parts += ["## Grid\n", f"Major TOM cells at {recipe.grid.distance_km:g} km (`grid_cell` such as "
              f"`{stored.grid_cell.iloc[0] if len(stored) else '454U_120R'}`; STAC `grid:code` `{prefix}-<cell>`), "
              f"each sample centred on its cell's footprint in the cell's UTM zone. Time: "
              f"{recipe.time.start:%Y-%m-%d} to {recipe.time.end:%Y-%m-%d}.\n"]  # fmt: skip
    parts += ["## Stages and their parameters\n", *_stages(recipe), ""]
    parts += ["## Statistics\n", *_statistics(index, root, tables), ""]
    parts += ["## Pictures\n"] + [f"![{alt}]({FIGURES}/{path.name})\n" for alt, path in pictures]
    parts += ["## Files\n", *_files(recipe, tables), ""]
    parts += ["## Loading it\n", _loading(recipe, tables)]
    parts += ["## Citation\n", "```bibtex", _citation(recipe, meta).strip(), "```", ""]
    return "\n".join(parts) + "\n"


def _stages(recipe: Recipe) -> list[str]:
    lines = []
    for source in recipe.sources:
        lines.append(f"- **acquire** `{_line(source.name)}`: max_cloud {source.max_cloud:g} %, resampling "
                     f"{source.resampling}, bands {', '.join(source.bands)}")  # fmt: skip
    out = recipe.outputs
    lines.append(f"- **store**: formats {', '.join(out.formats)}, {out.shard_size} samples a shard")
    for section in ("labels", "captions", "curation"):
        value = getattr(recipe, section)
        if value is not None:
            settings = json.dumps(value.model_dump(mode="json", exclude_none=True), sort_keys=True)
            lines.append(f"- **{section}**: `{_line(settings, 1000)}`")
    lines.append(f"- recipe hash `{recipe.fingerprint()}` (the recipe as built is `recipe.json`)")
    return lines


def _statistics(index: pd.DataFrame, root: Path, tables: list[str]) -> list[str]:
    counts = index.status.value_counts()
    stored = index[index.zarr_index.notna()]
    lines = [f"- samples stored: **{len(stored)}** of {len(index)} (cell, source, version) rows; "
             + ", ".join(f"{status} {int(n)}" for status, n in counts.items()),
             f"- cells: {index.grid_cell.nunique()}; sources: {', '.join(sorted(index.source.unique()))}"]  # fmt: skip
    if len(stored):
        lines.append(f"- time: {stored.timestamp.min():%Y-%m-%d} to {stored.timestamp.max():%Y-%m-%d}")
        for column, unit in (("cloud_cover", "%"), ("nodata", "share")):
            values = stored[column].dropna().to_numpy(dtype=float)
            if values.size:
                q = np.percentile(values, [0, 25, 50, 75, 100])
                lines.append(f"- {column} ({unit}): min {q[0]:.3g}, quartiles {q[1]:.3g} / {q[2]:.3g} / {q[3]:.3g}, "
                             f"max {q[4]:.3g}")  # fmt: skip
    reasons = index.reason.dropna().value_counts().head(3)
    for reason, n in reasons.items():
        lines.append(f"- {int(n)} × {_line(reason, 160)}")
    for table in tables:
        columns = [c for c in pq.read_schema(root / table).names if c != "sample_id"]
        rows = pq.read_metadata(root / table).num_rows
        lines.append(f"- `{table}`: {rows} rows; columns {', '.join(_line(c, 60) for c in columns[:20])}")
    return lines


def _files(recipe: Recipe, tables: list[str]) -> list[str]:
    lines = [f"- `{INDEX_NAME}`: GeoParquet, one row per (cell, source, version), keyed by `sample_id`; where the "
             "pixels are (`zarr_group`, `zarr_index`; Major TOM's `parquet_url`/`parquet_row` map to these)",
             f"- `{STORE_NAME}/<source>/`: Zarr v3, pixels (sample, band, y, x), one chunk per sample",
             f"- `{COLLECTION_NAME}`, `{ITEMS_NAME}`: STAC 1.1 collection and items (stac-geoparquet)"]  # fmt: skip
    lines += [f"- `{t}`: one row per sample, keyed by `sample_id`" for t in tables]
    if "taco" in recipe.outputs.formats:
        lines.append("- `taco/<source>/`: TACO, a COG per sample")
    if "video" in recipe.outputs.formats:
        lines.append("- `video/<source>/shard-NNNNN/`: video-codec cubes (decode rule in eo-etl's README)")
    return lines


def _loading(recipe: Recipe, tables: list[str]) -> str:
    source = recipe.sources[0].name if recipe.sources else "<source>"
    repo = recipe.publish.repo_id if recipe.publish else "<owner>/<name>"
    table = f'\nlabels = datasets.load_dataset("{repo}", "{Path(tables[0]).stem}")' if tables else ""
    return f"""```python
import datasets, xarray, rioxarray, huggingface_hub
index = datasets.load_dataset("{repo}", "index", split="train"){table}

folder = huggingface_hub.snapshot_download("{repo}", repo_type="dataset")   # or stream: hf://datasets/{repo}
ds = xarray.open_zarr(f"{{folder}}/{STORE_NAME}", group="{source}")   # pixels (sample, band, y, x) + columns
one = ds.pixels.isel(sample=0)
one = one.rio.write_crs(int(one.epsg))   # rio.crs; rio.transform() comes from its x/y

import eo_etl   # pip install eo-etl: the same, plus a PyTorch Dataset (eo_etl.store.torch_dataset.SampleDataset)
ds = eo_etl.open_dataset(folder, "{source}")
one = eo_etl.sample_array(ds, 0)
```
""" + (
        f"""
```python
import tacoreader   # formats: taco
taco = tacoreader.load(f"{{folder}}/taco/{source}")
```
"""
        if "taco" in recipe.outputs.formats
        else ""
    )


def _bibtex(text: str) -> str:
    return printable(text, 200).replace("{", "(").replace("}", ")").replace("\\", "/")


def _citation(recipe: Recipe, meta: dict) -> str:
    if recipe.publish and recipe.publish.citation:
        return recipe.publish.citation
    repo = recipe.publish.repo_id if recipe.publish else recipe.name
    year = datetime.now(UTC).year
    key = recipe.name.replace("-", "_")
    return f"""@misc{{{key}_{year},
  title        = {{{{{_bibtex(meta["pretty_name"])}}}: Major TOM-gridded Earth observation samples, built with eo-etl}},
  year         = {{{year}}},
  howpublished = {{\\url{{https://huggingface.co/datasets/{repo}}}}},
  note         = {{eo-etl recipe hash {recipe.fingerprint()}}}
}}"""
