"""The build as an Apache Beam pipeline: the graph (graph.py), its steps (transforms.py), where samples go
(shards.py), what a build has done (state.py), runner options (options.py) and a local progress view."""

import logging


def _import_beam_quietly() -> None:
    """Import Apache Beam leaving the root logger as it was. Beam's BigQuery client module warns on import when
    the gcp extra is absent (no build uses it) through ``logging.warning``, which also gives the root logger a
    stderr handler (``basicConfig``): an application importing eo-etl would find its logging configured."""
    root = logging.getLogger()
    handlers = list(root.handlers)

    def quiet(record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()

    root.addFilter(quiet)
    try:
        import apache_beam  # noqa: F401
    finally:
        root.removeFilter(quiet)
        for handler in [handler for handler in root.handlers if handler not in handlers]:
            root.removeHandler(handler)


_import_beam_quietly()
