"""Stages after the store: labels, captions, embeddings, curation, each a plain function over samples
(``core``), run by one mechanism (``run``: fingerprints, batches, tables and masks; ``views``: the same for a
stage over the whole dataset at once; ``eo_etl.pipeline.stages``: the same in Beam, a stage's model as a
``RunInference`` step of its own), listed in pipeline order in ``registry``. The contract:
/work/notes/stages.md (and below).
"""

from eo_etl.stages.core import Item, Labeller, ModelStep, Output, Stage, View

__all__ = ["Item", "Labeller", "ModelStep", "Output", "Stage", "View"]
