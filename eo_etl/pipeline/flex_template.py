"""The Dataflow Flex Template's launcher: template parameters in, one ``eo_etl.build.build`` on Dataflow out.

Dataflow starts the template image (docker/flex-template/) and runs ``main.py`` there, which calls :func:`main`
with the template's parameters (``--recipe``, ``--out``, ``--since``, ``--until``; metadata.json declares them)
mixed with the pipeline options Dataflow adds itself (``--project``, ``--region``, ``--temp_location``,
``--job_name``, ``--sdk_container_image``, …). The parameters are ours; every other argument is a Beam option
and goes on to the runner unchanged. The recipe is read through Beam's filesystems, so a ``gs://`` path works;
paths inside it (AOI files, local catalogs) are relative to its folder only when it is a local file, so a recipe
kept in a bucket names them absolutely. Workers need the package: the worker image (docker/Dockerfile) as
``sdk_container_image``, which the template image carries as ``EO_ETL_WORKER_IMAGE`` unless the launch names one.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

# Mirrors metadata.json's regexes (a test keeps the two equal).
SINCE = re.compile(r"^(LAST|\d{4}-\d{2}-\d{2})$")
UNTIL = re.compile(r"^\d{4}-\d{2}-\d{2}$")
WORKER_IMAGE_ENV = "EO_ETL_WORKER_IMAGE"
# Any of these gets the package onto the workers; without one, Dataflow's stock image lacks eo_etl.
SHIPS_PACKAGE = ("sdk_container_image", "worker_harness_container_image", "setup_file", "extra_packages")


def _since(text: str) -> str:
    if not SINCE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected LAST or a date YYYY-MM-DD")
    if text != "LAST":
        _until(text)
    return text


def _until(text: str) -> date:
    try:
        if UNTIL.match(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: expected a date YYYY-MM-DD")


def parser() -> argparse.ArgumentParser:
    """The template's own parameters; metadata.json lists the same names."""
    p = argparse.ArgumentParser(prog="eo-etl-flex-template", allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("--recipe", required=True, help="the recipe YAML: gs://bucket/recipes/x.yaml or a local path")
    p.add_argument("--out", required=True, help="the dataset folder")
    p.add_argument("--since", type=_since, default=None, help="LAST (since the last build) or YYYY-MM-DD")
    p.add_argument(
        "--until", type=_until, default=None, help="last day of a --since build, YYYY-MM-DD (default: yesterday, UTC)"
    )
    return p


def beam_options(args: Sequence[str]) -> dict[str, Any]:
    """``--key=value``, ``--key value`` and a bare ``--key`` (True) as a dict; a repeated key keeps every value."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise SystemExit(f"eo-etl-flex-template: unexpected argument {arg!r}: Beam options look like --key=value")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            following = args[i + 1] if i + 1 < len(args) else None
            if following is not None and not following.startswith("--"):
                value, i = following, i + 1
            else:
                value = True
        i += 1
        if key in options:
            previous = options[key]
            options[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            options[key] = value
    return options


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Split the launcher's command line: (template parameters, Beam options)."""
    known, unknown = parser().parse_known_args(list(argv))
    return known, beam_options(unknown)


def read_recipe(location: str):
    """Load the recipe at a local path or any URL Beam's filesystems open (gs://, s3://, …)."""
    from apache_beam.io.filesystems import FileSystems

    from eo_etl.recipe import load_recipe

    if FileSystems.get_scheme(location) is None:
        return load_recipe(location)
    with FileSystems.open(location) as remote:
        text = remote.read()
    with tempfile.TemporaryDirectory(prefix="eo-etl-recipe-") as folder:
        local = Path(folder) / (FileSystems.split(location)[1] or "recipe.yaml")
        local.write_bytes(text)
        return load_recipe(local)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, options = parse_args(sys.argv[1:] if argv is None else argv)
    image = os.environ.get(WORKER_IMAGE_ENV)
    if image and not any(options.get(name) for name in SHIPS_PACKAGE):
        options["sdk_container_image"] = image
    if not any(options.get(name) for name in SHIPS_PACKAGE):
        raise SystemExit(
            "eo-etl-flex-template: the workers need eo-etl: build the template image with "
            "--build-arg WORKER_IMAGE=<worker image>, or launch with --parameters sdk_container_image=<worker image>"
        )
    from eo_etl.build import build  # imported here: the launcher's arguments are checked before the pipeline loads

    recipe = read_recipe(args.recipe)
    report = build(recipe, args.out, since=args.since, until=args.until, runner="dataflow", options=options)
    if report.up_to_date:
        logging.info("%s: up to date, no new days since the last version", recipe.name)
    for stage in report.stages:
        logging.info("%s: %s, %s", stage.name, stage.status, stage.detail)


if __name__ == "__main__":
    main()
