"""eo-etl: build and curate ML-ready Earth observation corpora from the open archive."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eo-etl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
