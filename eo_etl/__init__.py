"""eo-etl: build and curate ML-ready Earth observation corpora from the open archive."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eo-etl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"


def open_dataset(root, source=None, **options):
    """A built dataset's samples as an xarray Dataset, with the columns of the stage tables named in
    ``stages=[…]`` and the stages' masks (see ``eo_etl.store.read.open_dataset``)."""
    from eo_etl.store.read import open_dataset as open_store  # xarray and zarr only when asked for

    return open_store(root, source, **options)
