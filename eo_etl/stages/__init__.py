"""Stages after the store: labels, captions, embeddings, curation, each a plain function over samples
(``core``), run by one mechanism (``run``: fingerprints, batches, tables and masks; ``eo_etl.pipeline.stages``:
the same in Beam), listed in pipeline order in ``registry``. The contract: /work/notes/stages.md (and below).
"""

from eo_etl.stages.core import Item, Labeller, Output, Stage

__all__ = ["Item", "Labeller", "Output", "Stage"]
