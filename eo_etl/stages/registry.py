"""Every stage after the store, in pipeline order: adding a stage is one entry here.

A stage's module declares its ``Stage``; a later stage reads an earlier one's table, never its module. The
build runs the configured ones in this order; ``--stages`` picks them by name or group (``labels``).
"""

from __future__ import annotations

import eo_etl.curate.stages as curate
from eo_etl.captions import stage as captions
from eo_etl.labels import landcover, osm
from eo_etl.stages.core import Stage, View

STAGES: list[Stage | View] = [
    landcover.STAGE,
    osm.STAGE,
    captions.STAGE,
    *curate.STAGES,
]


def find_stages(names: list[str]) -> list[Stage | View]:
    """The stages named (by name or group), in pipeline order; ValueError naming an unknown one."""
    known = {stage.name for stage in STAGES} | {stage.group for stage in STAGES}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--stages: unknown stage {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return [stage for stage in STAGES if stage.name in names or stage.group in names]
