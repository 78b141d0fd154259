"""A PyTorch ``Dataset`` over a built dataset's index and Zarr pixels, local or at any fsspec URL (extra ``torch``).

    from eo_etl.store.torch_dataset import SampleDataset
    data = SampleDataset("out/demo", bands=["B04", "B03", "B02"])
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2)

Each item is ``{"pixels": float32 (band, y, x), "valid": bool (y, x), "grid_cell": str, "index": int}``.
With ``normalize`` (the default) bands are standardised by the statistics stored with the data (mean and
standard deviation of each band's valid pixels) and nodata pixels become 0. The Zarr store is opened
lazily in each worker process, so the dataset pickles small.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zarr

from eo_etl.extras import MissingExtras, needs

try:
    import torch
except ModuleNotFoundError:  # say which extra, not only which module
    raise MissingExtras([needs("eo_etl.store.torch_dataset", "torch")]) from None

from eo_etl.store.read import choose_source, join_path, read_index, stored_rows
from eo_etl.store.zarr import STORE_NAME, quiet_consolidated


class SampleDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        root: str,
        source: str | None = None,
        *,
        bands: Sequence[str] | None = None,
        normalize: bool = True,
        storage_options: dict | None = None,
    ):
        self.root, self.storage_options, self.normalize = str(root), storage_options, normalize
        index = read_index(self.root, storage_options)
        self.source = choose_source(root, source, sorted(index.source[index.zarr_index.notna()].unique()))
        rows = stored_rows(index, self.source)
        self.cells = rows.grid_cell.tolist()
        self.positions = rows.zarr_index.astype(int).tolist()
        group = self._group()
        all_bands = list(group["band"][:])
        self.bands = list(bands or all_bands)
        unknown = [band for band in self.bands if band not in all_bands]
        if unknown:
            raise ValueError(f"unknown bands {unknown} for {self.source}; stored: {all_bands}")
        self.band_positions = [all_bands.index(band) for band in self.bands]
        statistics = group.attrs["band_statistics"]
        self.mean = np.array([statistics[band]["mean"] or 0.0 for band in self.bands], dtype=np.float32)
        self.std = np.array([statistics[band]["std"] or 1.0 for band in self.bands], dtype=np.float32)
        self.nodata = group["pixels"].attrs.get("nodata")
        self._pixels = None

    def _group(self) -> zarr.Group:
        with quiet_consolidated():
            return zarr.open_group(
                join_path(self.root, STORE_NAME, self.source), mode="r", storage_options=self.storage_options
            )

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        if self._pixels is None:  # first use in this process (a DataLoader worker opens its own)
            self._pixels = self._group()["pixels"]
        raw = self._pixels[self.positions[i]][self.band_positions]  # one chunk: the sample's bands
        valid = np.ones(raw.shape[1:], bool) if self.nodata is None else (raw != self.nodata).all(axis=0)
        pixels = raw.astype(np.float32)
        if self.normalize:
            pixels = (pixels - self.mean[:, None, None]) / self.std[:, None, None]
            pixels[:, ~valid] = 0.0
        return {
            "pixels": torch.from_numpy(pixels),
            "valid": torch.from_numpy(valid),
            "grid_cell": self.cells[i],
            "index": self.positions[i],
        }

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_pixels": None}  # workers reopen the store rather than pickle it
