"""The build as an Apache Beam pipeline: the graph (graph.py), its steps (transforms.py), where samples go
(shards.py), what a build has done (state.py), runner options (options.py) and a local progress view."""

import importlib.abc
import importlib.machinery
import logging
import sys
from contextlib import contextmanager


@contextmanager
def _root_logger_kept():
    """The root logger as it was after the block. Beam's BigQuery client module warns on import when the gcp
    extra is absent (no build uses it) through ``logging.warning``, which also gives the root logger a stderr
    handler (``basicConfig``): an application importing eo-etl would find its logging configured."""
    root = logging.getLogger()
    handlers = list(root.handlers)

    def quiet(record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()

    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        for handler in [handler for handler in root.handlers if handler not in handlers]:
            root.removeHandler(handler)


class _QuietBeamImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``apache_beam`` (when a module first does, not before: planning needs no Beam) with the root
    logger kept as it was; then steps aside."""

    def find_spec(self, name, path, target=None):
        if name != "apache_beam":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the package's own, for its resources
        with _root_logger_kept():
            self.loader.exec_module(module)


if "apache_beam" not in sys.modules:
    sys.meta_path.insert(0, _QuietBeamImport())
