"""A PyTorch ``Dataset`` over a built dataset's index and Zarr pixels, local or at any fsspec URL (extra ``torch``).

    from eo_etl.store.torch_dataset import SampleDataset
    data = SampleDataset("out/demo", bands=["B04", "B03", "B02"])
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2)

Each item is ``{"pixels": float32 (band, y, x), "valid": bool (y, x), "grid_cell": str, "index": int,
"sample_id": str}``; with ``stages=["landcover"]`` also ``"landcover": {column: value}`` (that stage table's
row: list columns need a ``collate_fn`` of yours to batch), and with ``masks=["landcover.class"]``
``"masks": {name: uint8 (y, x)}`` (the stages' masks, aligned with the pixels).
With ``normalize`` (the default) bands are standardised by the statistics stored with the data (mean and
standard deviation of each band's valid pixels) and nodata pixels become 0. The Zarr store is opened
lazily in each worker process, so the dataset pickles small.

With ``time_series=True`` an item is a place over time (store/series.py): ``"pixels"`` float32 (T, band, y, x),
``"valid"`` bool (T, y, x), ``"times"`` int64 (T,) acquisition times and ``"slice_starts"`` int64 (T,) the
slices' starts (seconds since 1970, UTC; -1 without slices), ``"sample_ids"`` (T strings), ``"grid_cell"``. T
is the cell's own count of stored samples: batch with ``batch_size=1`` or a ``collate_fn`` of yours where it
varies (a cell missing a season has three); stage rows and masks are per sample, not given for sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import zarr

from eo_etl.extras import MissingExtras, needs

try:
    import torch
except ModuleNotFoundError:  # say which extra, not only which module
    raise MissingExtras([needs("eo_etl.store.torch_dataset", "torch")]) from None

from eo_etl.store.read import choose_source, join_path, read_index, stage_columns, stored_rows
from eo_etl.store.series import cell_series
from eo_etl.store.zarr import STORE_NAME, quiet_consolidated


class SampleDataset(torch.utils.data.Dataset):
    """One source's stored samples of a built dataset as PyTorch items (dicts; see the module's docstring).

    Args:
        root: the dataset: a folder or an fsspec URL (``https://…``, ``s3://…``).
        source: the source to read; may be left out when the dataset has one.
        bands: the bands, in this order (default: all stored).
        normalize: standardise bands by the stored statistics, nodata pixels set to 0.
        stages: stage tables whose row each item carries (``item["landcover"]``).
        masks: stage masks each item carries (``item["masks"]["landcover.class"]``).
        storage_options: fsspec options for a URL.
        transforms: a callable applied to each item (the dict) before it is returned, as torchgeo's datasets
            take: augmentations, band selection, target building. It must pickle for a multi-process DataLoader.
    """

    def __init__(
        self,
        root: str,
        source: str | None = None,
        *,
        bands: Sequence[str] | None = None,
        normalize: bool = True,
        stages: Sequence[str] = (),
        masks: Sequence[str] = (),
        time_series: bool = False,
        storage_options: dict | None = None,
        transforms: Callable[[dict], dict] | None = None,
    ):
        self.root, self.storage_options, self.normalize = str(root), storage_options, normalize
        self.transforms = transforms
        index = read_index(self.root, storage_options)
        self.source = choose_source(root, source, sorted(index.source[index.zarr_index.notna()].unique()))
        rows = stored_rows(index, self.source)
        self.cells = rows.grid_cell.tolist()
        self.positions = rows.zarr_index.astype(int).tolist()
        self.sample_ids = rows.sample_id.tolist()
        self.series = cell_series(rows) if time_series else None
        if self.series is not None and (stages or masks):
            raise ValueError("time_series: stage rows and masks are per sample; read them without time_series")
        self.stage_rows = _stage_rows(stage_columns(self.root, rows, stages, storage_options), stages)
        group = self._group()
        self.masks = _stored_masks(group, masks, self.source)
        self.bands, self.band_positions = _stored_bands(group, bands, self.source)
        statistics = group.attrs["band_statistics"]
        self.mean = np.array([statistics[band]["mean"] or 0.0 for band in self.bands], dtype=np.float32)
        self.std = np.array([statistics[band]["std"] or 1.0 for band in self.bands], dtype=np.float32)
        self.nodata = group["pixels"].attrs.get("nodata")
        self._pixels = None
        self._masks = None

    def _group(self) -> zarr.Group:
        with quiet_consolidated():
            return zarr.open_group(
                join_path(self.root, STORE_NAME, self.source), mode="r", storage_options=self.storage_options
            )

    def __len__(self) -> int:
        """The number of stored samples, or of places with ``time_series``."""
        return len(self.positions) if self.series is None else len(self.series)

    def _read(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pixels is None:  # first use in this process (a DataLoader worker opens its own)
            self._pixels = self._group()["pixels"]
        raw = self._pixels[position][self.band_positions]  # one chunk: the sample's bands
        valid = np.ones(raw.shape[1:], bool) if self.nodata is None else (raw != self.nodata).all(axis=0)
        pixels = raw.astype(np.float32)
        if self.normalize:
            pixels = (pixels - self.mean[:, None, None]) / self.std[:, None, None]
            pixels[:, ~valid] = 0.0
        return pixels, valid

    def _sequence(self, i: int) -> dict:
        one = self.series[i]
        read = [self._read(position) for position in one.positions]
        return {
            "pixels": torch.from_numpy(np.stack([pixels for pixels, _ in read])),
            "valid": torch.from_numpy(np.stack([valid for _, valid in read])),
            "times": torch.tensor([int(t.timestamp()) for t in one.times], dtype=torch.int64),
            "slice_starts": torch.tensor([-1 if t is None else int(t.timestamp()) for t in one.slice_starts]),
            "sample_ids": list(one.sample_ids),
            "grid_cell": one.cell,
        }

    def __getitem__(self, i: int) -> dict:
        """The ``i``-th stored sample (store order), or place's series, after ``transforms``."""
        if self.series is not None:
            item = self._sequence(i)
            return item if self.transforms is None else self.transforms(item)
        pixels, valid = self._read(self.positions[i])
        item = {
            "pixels": torch.from_numpy(pixels),
            "valid": torch.from_numpy(valid),
            "grid_cell": self.cells[i],
            "index": self.positions[i],
            "sample_id": self.sample_ids[i],
        }
        for stage, rows in self.stage_rows.items():
            item[stage] = rows[i]
        if self.masks:
            if self._masks is None:
                group = self._group()
                self._masks = {name: group[name] for name in self.masks}
            item["masks"] = {name: torch.from_numpy(array[self.positions[i]]) for name, array in self._masks.items()}
        return item if self.transforms is None else self.transforms(item)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_pixels": None, "_masks": None}  # workers reopen the store rather than pickle it


def _stage_rows(columns, stages: Sequence[str]) -> dict[str, list[dict]]:
    """Each stage's row per sample, its columns without the ``<stage>.`` prefix."""
    return {
        stage: [{c.removeprefix(f"{stage}."): v for c, v in row.items() if c.startswith(f"{stage}.")}
                for row in columns.to_dict("records")]
        for stage in stages
    }  # fmt: skip


def _stored_masks(group: zarr.Group, masks: Sequence[str], source: str) -> list[str]:
    """The masks asked for, each one a stage wrote (``<stage>.<name>``) in ``source``'s group."""
    masks = list(masks)
    missing = [name for name in masks if "." not in name or name not in group]
    if missing:
        raise ValueError(f"no mask {missing[0]!r} in {source}; stages write masks as <stage>.<name>")
    return masks


def _stored_bands(group: zarr.Group, bands: Sequence[str] | None, source: str) -> tuple[list[str], list[int]]:
    """The bands asked for (all by default), each one ``source`` stores, and their places in its pixels."""
    stored = list(group["band"][:])
    chosen = list(bands or stored)
    unknown = [band for band in chosen if band not in stored]
    if unknown:
        raise ValueError(f"unknown bands {unknown} for {source}; stored: {stored}")
    return chosen, [stored.index(band) for band in chosen]
