"""The curation stages, in pipeline order (the registry takes them as one entry), and the views written from
their tables once they have run: Major TOM's embedding GeoParquet, the dedup flags, the balanced split."""

from __future__ import annotations

from eo_etl.curate import embed, quality
from eo_etl.recipe.models import Recipe

STAGES = [quality.STAGE, embed.STAGE]
VIEW_SECTIONS = ("curation.dedup", "curation.balance")  # run by write_views, not as stages


def write_views(recipe: Recipe, root) -> list[tuple[str, str, str]]:
    """Write what the recipe configures of embeddings.parquet, dedup.parquet and balance.parquet, in that order;
    (name, status, detail) each: "done" or "failed" with the one-line reason (the others still run)."""
    from eo_etl.curate.dedup import write_duplicates
    from eo_etl.curate.sample import write_balance

    curation = recipe.curation
    steps = [("fragments", curation and curation.embed, lambda: embed.write_fragments(root)),
             ("dedup", curation and curation.dedup, lambda: write_duplicates(recipe, root)),
             ("balance", curation and curation.balance, lambda: write_balance(recipe, root))]  # fmt: skip
    reports = []
    for name, configured, write in steps:
        if not configured:
            continue
        try:
            reports.append((name, "done", f"→ {write()}"))
        except (FileNotFoundError, ValueError) as error:
            reports.append((name, "failed", str(error)))
    return reports
