"""The curation stages, in pipeline order (the registry takes them as one entry): quality and embed per sample,
then the views over the whole dataset written from their tables: Major TOM's embedding GeoParquet, the dedup
flags, the balanced split (each rerun only when its settings or the tables it reads changed)."""

from __future__ import annotations

from eo_etl.curate import dedup, embed, quality, sample
from eo_etl.stages.core import View

FRAGMENTS = View(name="fragments", group="curate", section="curation.embed", table=embed.FRAGMENTS_NAME,
                 write=lambda recipe, root: embed.write_fragments(root), reads=("embed",))  # fmt: skip
DEDUP = View(name="dedup", group="curate", section="curation.dedup", table=dedup.TABLE_NAME,
             write=dedup.write_duplicates, reads=("quality", "embed"))  # fmt: skip
BALANCE = View(name="balance", group="curate", section="curation.balance", table=sample.TABLE_NAME,
               write=sample.write_balance, reads=("embed", "quality", "dedup", "landcover"))  # fmt: skip

STAGES = [quality.STAGE, embed.STAGE, FRAGMENTS, DEDUP, BALANCE]
