"""The build as an Apache Beam pipeline: the graph (graph.py), its steps (transforms.py), where samples go
(shards.py), what a build has done (state.py), runner options (options.py) and a local progress view."""

import logging

# Beam's BigQuery client module warns on import when the gcp extra is absent; no build uses it.
logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())
