"""Uploading a built dataset to the Hugging Face Hub with huggingface_hub's resumable folder upload.

What goes up: the dataset folder as written, less what is the build's own (``_build/``, ``_build.lock``,
``*.partial``, hidden files such as huggingface_hub's ``.cache/``). It goes in two steps, data first
(pixels, TACO, video) and then what makes it a dataset (the index, stage tables, STAC, the card): a repo whose
card names a version holds all of it. Each publish adds commits on top of the branch (history is kept) whose
message names the dataset version; files the Hub already has with the same content are not sent again, so
rerunning an interrupted publish sends only what is missing. ``collection.json`` gains a link to the Hub's copy
(``rel: alternate``); its assets' and the items' hrefs are relative, so they resolve on the Hub as they do here.

The token is huggingface_hub's: ``HF_TOKEN`` or the one ``hf auth login`` saved. It is never printed, logged or
written into the card; errors are reported as one line without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING

from eo_etl.publish.card import FIGURES, write_card
from eo_etl.recipe import Recipe
from eo_etl.recipe.models import Publish
from eo_etl.store.catalog import COLLECTION_NAME

if TYPE_CHECKING:
    from huggingface_hub import HfApi

HUB_TITLE = "Hugging Face Hub"
INTERNAL = ["_build/*", "_build.lock", "*.partial", ".*", "*/.*"]  # never uploaded


class PublishError(RuntimeError):
    """A publish that cannot go on: one line, naming what to fix (never the token)."""


@dataclass
class PublishReport:
    repo_id: str
    revision: str
    files: list[str]  # what was (or, in a dry run, would be) uploaded, relative to the dataset
    bytes: int
    dry_run: bool
    url: str | None = None  # the commit's URL on the Hub
    commits: list[str] = field(default_factory=list)


def upload_files(root: Path) -> tuple[list[str], list[str]]:
    """The files to upload, as (data, last): ``last`` are the top-level files and the card's figures."""
    data, last = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if any(fnmatch(relative, pattern) for pattern in INTERNAL):
            continue
        (last if "/" not in relative or relative.startswith(f"{FIGURES}/") else data).append(relative)
    return data, last


def publish(
    root: Path | str,
    recipe: Recipe,
    settings: Publish,
    *,
    dry_run: bool = False,
    endpoint: str | None = None,
) -> PublishReport:
    """Write the card into the built dataset ``root`` and upload it to ``settings.repo_id`` (a dry run writes the
    card and lists the files, and sends nothing). ``endpoint``: the Hub's URL (``HF_ENDPOINT`` otherwise)."""
    root = Path(root)
    if not (root / "index.parquet").is_file():
        raise PublishError(f"{root}: no index.parquet: build the dataset before publishing it")
    recipe = recipe.model_copy(update={"publish": settings})
    write_card(root, recipe)
    data, last = upload_files(root)
    total = sum((root / name).stat().st_size for name in data + last)
    report = PublishReport(settings.repo_id, settings.revision, data + last, total, dry_run)
    if dry_run:
        return report
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not get_token():
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token)")
    api = HfApi(endpoint=endpoint)
    _link_collection(root, f"{api.endpoint}/datasets/{settings.repo_id}", settings.revision)
    version = _version(root)
    message = f"{recipe.name} version {version}" if version else recipe.name
    try:
        _upload(api, root, settings, data, last, message, report)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "no reply"
        raise PublishError(f"publish to {settings.repo_id}: the Hub answered {status}; rerun to resume") from None
    except OSError as error:
        raise PublishError(f"publish to {settings.repo_id}: {type(error).__name__}; rerun to resume") from None
    return report


def _upload(
    api: HfApi, root: Path, settings: Publish, data: list[str], last: list[str], message: str, report: PublishReport
) -> None:
    """The repo (and branch) made if new, then two commits: the data, then the index, STAC and card that name it
    (so a reader never sees an index whose files are missing); each commit noted in ``report``."""
    api.create_repo(settings.repo_id, repo_type="dataset", private=settings.private, exist_ok=True)
    if settings.revision != "main":
        api.create_branch(settings.repo_id, repo_type="dataset", branch=settings.revision, exist_ok=True)
    for files, what, ignore in ((data, "data", INTERNAL + last), (last, "index, STAC and card", INTERNAL)):
        if not files:
            continue
        commit = api.upload_folder(
            repo_id=settings.repo_id, repo_type="dataset", folder_path=root, revision=settings.revision,
            allow_patterns=None if what == "data" else files, ignore_patterns=ignore,
            commit_message=f"{message}: {what}",
        )  # fmt: skip
        report.commits.append(commit.oid)
        report.url = commit.commit_url


def _link_collection(root: Path, url: str, revision: str) -> None:
    """Name the Hub's copy in ``collection.json`` (its assets' relative hrefs resolve there as they do here)."""
    path = root / COLLECTION_NAME
    if not path.is_file():
        return
    collection = json.loads(path.read_text())
    links = [link for link in collection.get("links", []) if link.get("title") != HUB_TITLE]
    href = url if revision == "main" else f"{url}/tree/{revision}"
    links.append({"rel": "alternate", "href": href, "type": "text/html", "title": HUB_TITLE})
    path.write_text(json.dumps(collection | {"links": links}, indent=2))


def _version(root: Path) -> int | None:
    try:
        versions = json.loads((root / "versions.json").read_text())
    except (OSError, ValueError):
        return None
    return versions[-1]["version"] if versions else None
