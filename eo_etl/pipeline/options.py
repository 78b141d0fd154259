"""Beam pipeline options from the recipe's ``runner`` section and the command line.

    direct    DirectRunner in multi-processing mode, ``workers`` processes (named explicitly: Beam's default
              runner first tries to download Prism, which fails offline)
    dataflow  DataflowRunner (extra ``dataflow``); workers run the image built from docker/Dockerfile, which
              holds the package, so nothing is staged at submission
    spark     PortableRunner against a Spark job server (``job_endpoint``, default localhost:8099)
    flink     FlinkRunner against a Flink cluster (``flink_master``), or PortableRunner when ``job_endpoint``
              is given

``runner.options`` and ``--option key=value`` flags are passed through as ``--key=value``; flags win. Booleans,
also the strings true/false that ``--option`` gives: true as a bare ``--key`` (Beam's switches take no value),
false as ``--no_key`` where Beam has that switch (``use_public_ips``, ``save_main_session``), else left out. A
list (a flag repeated on a Flex Template's command line) gives the flag once per value.
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Mapping
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from eo_etl.recipe.models import Runner, direct_processes_problem

DEFAULT_JOB_ENDPOINT = "localhost:8099"
OPTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # Beam's option names: temp_location, sdk_container_image
WORKER_IMAGE = "eo-etl-worker"  # docker/Dockerfile; push it and pass sdk_container_image on Dataflow

# What each runner needs before it can start, and the flag that gives it.
REQUIRED = {
    "dataflow": ("project", "region", "temp_location"),
}


class RunnerOptionsError(ValueError):
    """Options a runner needs are missing or malformed; the message names them."""


def runner_flags(runner: Runner, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """The ``--key=value`` arguments Beam gets for ``runner`` with ``overrides`` on top."""
    extra = {**runner.options, **(overrides or {})}
    kind = runner.kind
    if kind == "direct":
        # Named, not defaulted: Beam's default runner first tries to download Prism. ERROR: the workers'
        # start-up chatter.
        base = {"runner": "DirectRunner", "direct_num_workers": runner.workers,
                "direct_running_mode": "multi_processing", "default_sdk_harness_log_level": "ERROR"}  # fmt: skip
    elif kind == "dataflow":
        base = {"runner": "DataflowRunner", "max_num_workers": runner.workers, "experiments": "use_runner_v2"}
    elif kind == "spark":
        base = {"runner": "PortableRunner", "job_endpoint": DEFAULT_JOB_ENDPOINT, "environment_type": "LOOPBACK"}
    elif "job_endpoint" in extra:  # flink through a job server
        base = {"runner": "PortableRunner", "environment_type": "LOOPBACK", "parallelism": runner.workers}
    else:
        base = {"runner": "FlinkRunner", "flink_master": "localhost:8081", "environment_type": "LOOPBACK",
                "parallelism": runner.workers}  # fmt: skip
    values = {**base, **extra}
    problem = kind == "direct" and direct_processes_problem(values["direct_num_workers"])
    if problem:  # --option may set the processes too: held to the bound of runner.workers
        raise RunnerOptionsError(problem)
    missing = [name for name in REQUIRED.get(kind, ()) if not values.get(name)]
    if missing:
        flags = ", ".join(f"--option {name}=…" for name in missing)
        raise RunnerOptionsError(f"runner {kind} needs {', '.join(missing)}: set runner.options or pass {flags}")
    return [flag for key, value in values.items() for flag in _flags(key, value)]


def _flags(key: str, value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [flag for item in value for flag in _flags(key, item)]
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if value is True:
        return [f"--{key}"]
    if value is False:
        return [f"--no_{key}"] if key in _negatable() else []
    return [f"--{key}={value}"]


@functools.cache
def _negatable() -> frozenset[str]:
    """Options Beam turns off with ``--no_<name>`` (a store_false switch of that name)."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return frozenset(
        action.dest
        for action in parser._actions
        if isinstance(action, argparse._StoreFalseAction) and f"--no_{action.dest}" in action.option_strings
    )


def pipeline_options(runner: Runner, overrides: Mapping[str, Any] | None = None) -> PipelineOptions:
    return PipelineOptions(runner_flags(runner, overrides))


def parse_option(text: str) -> tuple[str, str]:
    """``key=value`` from the command line."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not OPTION_NAME.fullmatch(key):
        raise RunnerOptionsError(f"--option {text!r}: expected key=value, e.g. --option region=europe-west4")
    return key, value
