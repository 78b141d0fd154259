"""The curation stages, in pipeline order (the registry takes them as one entry)."""

from eo_etl.curate import embed, quality

STAGES = [quality.STAGE, embed.STAGE]
