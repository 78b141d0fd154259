"""Runner packaging, offline: the Beam options each runner kind gets (read back by Beam's own parser), the
worker and Flex Template images (hadolint, layout), the template's metadata against its launcher, and the
schedule examples against the template. Nothing here starts a cluster or builds an image."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import apache_beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
    _BeamArgumentParser,
)

from eo_etl.build import build
from eo_etl.pipeline import flex_template
from eo_etl.pipeline.options import RunnerOptionsError, parse_option, pipeline_options, runner_flags
from eo_etl.recipe import load_recipe
from eo_etl.recipe.models import Runner

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
FLEX = DOCKER / "flex-template"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
DATAFLOW = {"project": "my-project", "region": "europe-west4", "temp_location": "gs://my-bucket/tmp"}
IMAGE = "europe-west4-docker.pkg.dev/my-project/eo-etl/eo-etl-worker:0.1.0"


# ------------------------------------------------------------------------------------------- options


def test_direct_runs_beams_direct_runner_with_one_process_per_worker():
    options = pipeline_options(Runner(kind="direct", workers=3))
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 3
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"


def test_dataflow_gets_project_region_temp_location_and_the_worker_image():
    runner = Runner(kind="dataflow", workers=16, options=DATAFLOW)
    options = pipeline_options(runner, {"sdk_container_image": IMAGE})
    cloud = options.view_as(GoogleCloudOptions)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert (cloud.project, cloud.region, cloud.temp_location) == ("my-project", "europe-west4", "gs://my-bucket/tmp")
    assert options.view_as(WorkerOptions).sdk_container_image == IMAGE
    assert options.view_as(WorkerOptions).max_num_workers == 16
    assert options.view_as(DebugOptions).experiments == ["use_runner_v2"]


def test_spark_goes_through_a_job_server_with_loopback_workers_by_default():
    options = pipeline_options(Runner(kind="spark"))
    portable = options.view_as(PortableOptions)
    assert options.view_as(StandardOptions).runner == "PortableRunner"
    assert (portable.job_endpoint, portable.environment_type) == ("localhost:8099", "LOOPBACK")

    cluster = {"job_endpoint": "spark-master:8099", "environment_type": "DOCKER", "environment_config": IMAGE}
    portable = pipeline_options(Runner(kind="spark"), cluster).view_as(PortableOptions)
    assert (portable.job_endpoint, portable.environment_type, portable.environment_config) == (
        "spark-master:8099",
        "DOCKER",
        IMAGE,
    )


def test_flink_uses_the_flink_runner_or_a_job_server_when_one_is_named():
    options = pipeline_options(Runner(kind="flink", workers=6), {"flink_version": "1.19"})
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    assert options.view_as(FlinkRunnerOptions).parallelism == 6  # runner.workers
    assert options.view_as(FlinkRunnerOptions).flink_master == "localhost:8081"
    assert options.view_as(FlinkRunnerOptions).flink_version == "1.19"
    assert options.view_as(PortableOptions).environment_type == "LOOPBACK"

    options = pipeline_options(Runner(kind="flink", options={"job_endpoint": "jobmanager:8099"}))
    assert options.view_as(StandardOptions).runner == "PortableRunner"
    assert options.view_as(PortableOptions).job_endpoint == "jobmanager:8099"


def test_overrides_win_over_the_recipe_and_the_recipe_over_the_defaults():
    runner = Runner(kind="dataflow", options={**DATAFLOW, "machine_type": "n2-standard-4", "max_num_workers": 5})
    options = pipeline_options(runner, {"region": "us-central1"})
    assert options.view_as(GoogleCloudOptions).region == "us-central1"
    assert options.view_as(WorkerOptions).machine_type == "n2-standard-4"
    assert options.view_as(WorkerOptions).max_num_workers == 5  # not runner.workers

    spark = pipeline_options(
        Runner(kind="spark", options={"environment_type": "DOCKER"}), {"environment_type": "EXTERNAL"}
    )
    assert spark.view_as(PortableOptions).environment_type == "EXTERNAL"


def test_booleans_become_beam_switches_whether_from_yaml_or_from_option_flags():
    runner = Runner(kind="dataflow", options={**DATAFLOW, "save_main_session": True, "streaming": False})
    flags = runner_flags(
        runner, dict([parse_option("use_public_ips=false"), parse_option("enable_streaming_engine=TRUE")])
    )
    assert "--save_main_session" in flags and "--no_use_public_ips" in flags and "--enable_streaming_engine" in flags
    assert not any(flag.startswith("--streaming") for flag in flags)  # false, and Beam has no --no_streaming
    options = PipelineOptions(flags)
    assert options.view_as(SetupOptions).save_main_session is True
    assert options.view_as(WorkerOptions).use_public_ips is False
    assert options.view_as(StandardOptions).streaming is False
    assert options.view_as(GoogleCloudOptions).enable_streaming_engine is True


def test_a_repeated_option_is_passed_once_per_value():
    flags = runner_flags(
        Runner(kind="dataflow", options=DATAFLOW), {"experiments": ["use_runner_v2", "no_use_multiple_sdk_containers"]}
    )
    assert PipelineOptions(flags).view_as(DebugOptions).experiments == [
        "use_runner_v2",
        "no_use_multiple_sdk_containers",
    ]


def test_a_missing_dataflow_option_is_named_before_beam_starts():
    with pytest.raises(RunnerOptionsError) as caught:
        runner_flags(Runner(kind="dataflow", options={"project": "my-project"}), {"region": ""})
    message = str(caught.value)
    assert message.startswith("runner dataflow needs region, temp_location: ")  # an empty value is missing too
    assert "--option region=…" in message and "--option temp_location=…" in message
    assert "project" not in message


def test_a_dataflow_build_into_a_local_folder_is_refused_before_any_work(tmp_path, demo_catalog):
    recipe = load_recipe(ROOT / "pipelines" / "demo.yaml")
    with pytest.raises(ValueError, match="Dataflow's workers share no disk; write the dataset to gs://"):
        build(recipe, tmp_path / "demo", runner="dataflow", options=DATAFLOW)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["region", "=europe-west4", "  =x", "temp location=gs://b", "--=x", "1region=x"])
def test_a_malformed_option_flag_is_rejected(text):
    with pytest.raises(RunnerOptionsError, match="expected key=value"):
        parse_option(text)


def test_an_option_flag_keeps_everything_after_the_first_equals_sign():
    assert parse_option("--region=europe-west4") == ("region", "europe-west4")
    assert parse_option('environment_config={"url": "a=b"}') == ("environment_config", '{"url": "a=b"}')


# --------------------------------------------------------------------------------------- dockerfiles


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, pending = [], ""
    for raw in dockerfile.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        name, _, args = pending.strip().partition(" ")
        lines.append((name.upper(), args.strip()))
        pending = ""
    return lines


def build_args(dockerfile: Path) -> dict[str, str]:
    return dict(arg.split("=", 1) for name, arg in instructions(dockerfile) if name == "ARG" and "=" in arg)


@pytest.mark.parametrize("dockerfile", [DOCKER / "Dockerfile", FLEX / "Dockerfile"], ids=["worker", "flex-template"])
def test_hadolint_passes_on_the_dockerfiles(dockerfile):
    result = subprocess.run([HADOLINT, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([HADOLINT, str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_the_worker_image_is_beams_sdk_image_of_the_installed_beam_with_its_harness_entrypoint():
    steps = instructions(DOCKER / "Dockerfile")
    args = build_args(DOCKER / "Dockerfile")
    assert args["BEAM_VERSION"] == apache_beam.__version__
    assert ("FROM", "apache/beam_python3.11_sdk:${BEAM_VERSION}") in steps
    assert [arg for name, arg in steps if name == "ENTRYPOINT"] == ['["/opt/apache/beam/boot"]']
    assert "dataflow" in args["EXTRAS"].split(",")
    install = next(arg for name, arg in steps if name == "RUN" and "pip install" in arg)
    assert '"/opt/eo-etl[${EXTRAS}]"' in install and '"apache-beam[gcp]==${BEAM_VERSION}"' in install


def test_the_flex_template_launches_main_py_from_where_the_dockerfile_copies_it():
    dockerfile = FLEX / "Dockerfile"
    steps = instructions(dockerfile)
    args = build_args(dockerfile)
    assert args["BEAM_VERSION"] == apache_beam.__version__ == build_args(DOCKER / "Dockerfile")["BEAM_VERSION"]
    assert next(arg for name, arg in steps if name == "FROM").startswith(
        "gcr.io/dataflow-templates-base/python311-template-launcher-base:"
    )
    env = dict(pair.split("=", 1) for name, arg in steps if name == "ENV" for pair in shlex.split(arg))
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE" not in env and "FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE" not in env
    assert env[flex_template.WORKER_IMAGE_ENV] == "${WORKER_IMAGE}"
    # Replay WORKDIR and COPY to find which repository file lands at FLEX_TEMPLATE_PYTHON_PY_FILE.
    workdir, image = Path("/"), {}
    for name, arg in steps:
        if name == "WORKDIR":
            workdir = workdir / arg
        elif name == "COPY":
            *sources, target = arg.split()
            for source in sources:
                into = workdir / target
                image[into / Path(source).name if target.endswith("/") else into] = ROOT / source
    launched = image[Path(env["FLEX_TEMPLATE_PYTHON_PY_FILE"])]
    assert launched == FLEX / "main.py" and launched.is_file()
    assert "from eo_etl.pipeline.flex_template import main" in launched.read_text()


# ------------------------------------------------------------------------------ template and launcher


def metadata() -> dict:
    return json.loads((FLEX / "metadata.json").read_text())


def test_the_template_metadata_declares_exactly_the_launchers_parameters():
    meta = metadata()
    assert meta["name"] and meta["description"]
    names = [p["name"] for p in meta["parameters"]]
    assert len(names) == len(set(names)) == 4
    for parameter in meta["parameters"]:
        assert {"name", "label", "helpText"} <= set(parameter) and parameter["label"] and parameter["helpText"]
    actions = {a.dest: a for a in flex_template.parser()._actions if a.dest != "help"}
    assert set(names) == set(actions)
    for parameter in meta["parameters"]:
        assert parameter.get("isOptional", False) is not actions[parameter["name"]].required


EXAMPLES = {
    "recipe": (["gs://my-bucket/recipes/majortom-core-s2l2a.yaml", "gs://b.example.com/x.yml"],
               ["pipelines/demo.yaml", "gs://my-bucket/recipes/", "gs://my-bucket/r.json", "s3://b/r.yaml"]),
    "out": (["/mnt/datasets/majortom", "/data/x"], ["out/demo", "/mnt/datasets/", "gs://b/out", ""]),
    "since": (["LAST", "2024-01-31"], ["last", "2024-1-31", "yesterday", ""]),
    "until": (["2024-12-31"], ["LAST", "31/12/2024", "2024-12-31T00:00"]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_metadata_regexes_accept_good_values_and_reject_bad_ones(name):
    parameter = next(p for p in metadata()["parameters"] if p["name"] == name)
    patterns = [re.compile(regex) for regex in parameter["regexes"]]
    good, bad = EXAMPLES[name]
    for value in good:
        assert all(p.search(value) for p in patterns), value
    for value in bad:
        assert not all(p.search(value) for p in patterns), value


def test_the_launcher_checks_since_and_until_as_the_metadata_does():
    regexes = {p["name"]: p["regexes"] for p in metadata()["parameters"]}
    assert regexes["since"] == [flex_template.SINCE.pattern] and regexes["until"] == [flex_template.UNTIL.pattern]


def test_the_launcher_splits_template_parameters_from_beam_options():
    args, options = flex_template.parse_args(
        ["--recipe=gs://my-bucket/r.yaml", "--runner=DataflowRunner", "--out", "/mnt/datasets/r", "--project", "p",
         "--since=LAST", "--until=2024-06-30", "--region=europe-west4", "--experiments=a", "--experiments=b",
         "--no_use_public_ips", "--temp_location=gs://my-bucket/tmp", "--job_name=eo-etl-r"]
    )  # fmt: skip
    assert (args.recipe, args.out, args.since, args.until) == (
        "gs://my-bucket/r.yaml",
        "/mnt/datasets/r",
        "LAST",
        date(2024, 6, 30),
    )
    assert options == {
        "runner": "DataflowRunner",
        "project": "p",
        "region": "europe-west4",
        "experiments": ["a", "b"],
        "no_use_public_ips": True,
        "temp_location": "gs://my-bucket/tmp",
        "job_name": "eo-etl-r",
    }
    # What the launcher passes on is what the runner gets.
    beam = pipeline_options(Runner(kind="dataflow"), options)
    assert beam.view_as(GoogleCloudOptions).job_name == "eo-etl-r"
    assert beam.view_as(DebugOptions).experiments == ["a", "b"]
    assert beam.view_as(WorkerOptions).use_public_ips is False


@pytest.mark.parametrize(
    "argv",
    [["--out=/x"], ["--recipe=gs://b/r.yaml"], ["--recipe=gs://b/r.yaml", "--out=/x", "--since=yesterday"],
     ["--recipe=gs://b/r.yaml", "--out=/x", "--until=2024-02-30"], ["--recipe=gs://b/r.yaml", "--out=/x", "stray"]],
)  # fmt: skip
def test_the_launcher_rejects_missing_or_bad_parameters(argv):
    with pytest.raises(SystemExit):
        flex_template.parse_args(argv)


class _PrefixedLocal(LocalFileSystem):
    """A local folder behind a URL scheme, standing in for gs:// in Beam's filesystem registry."""

    @classmethod
    def scheme(cls):
        return "eotest"

    def open(self, path, *args, **kwargs):
        return super().open(path.removeprefix("eotest://"), *args, **kwargs)


def test_the_launcher_reads_a_recipe_through_beams_filesystems(tmp_path, demo_catalog):
    recipe = tmp_path / "bucket" / "recipes" / "majortom.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text((ROOT / "pipelines" / "majortom-core-s2l2a.yaml").read_text())
    assert FileSystems.get_filesystem(f"eotest://{recipe}").scheme() == "eotest"
    loaded = flex_template.read_recipe(f"eotest://{recipe}")
    assert loaded.name == "majortom-core-s2l2a" and loaded.grid.distance_km == 10
    assert flex_template.read_recipe(str(ROOT / "pipelines" / "demo.yaml")).name == "demo"


def test_the_launcher_builds_on_dataflow_with_the_worker_image(monkeypatch, demo_catalog):
    build_module = importlib.import_module("eo_etl.build")  # the module: the attribute eo_etl.build is the function
    calls = []

    def build(recipe, out, **kw):
        calls.append((recipe.name, out, kw))
        return SimpleNamespace(up_to_date=False, stages=[])

    monkeypatch.setattr(build_module, "build", build)
    monkeypatch.setenv(flex_template.WORKER_IMAGE_ENV, IMAGE)
    flex_template.main([f"--recipe={ROOT / 'pipelines' / 'demo.yaml'}", "--out=/mnt/d", "--since=LAST", "--project=p"])
    assert calls == [
        ("demo", "/mnt/d", {"since": "LAST", "until": None, "runner": "dataflow",
                            "options": {"project": "p", "sdk_container_image": IMAGE}}),
    ]  # fmt: skip

    calls.clear()  # an image named at launch wins over the template's
    flex_template.main([f"--recipe={ROOT / 'pipelines' / 'demo.yaml'}", "--out=/mnt/d", "--sdk_container_image=other"])
    assert calls[0][2]["options"] == {"sdk_container_image": "other"}


def test_the_launcher_refuses_to_start_workers_that_lack_the_package(monkeypatch):
    monkeypatch.delenv(flex_template.WORKER_IMAGE_ENV, raising=False)
    with pytest.raises(SystemExit, match="sdk_container_image"):
        flex_template.main(["--recipe=gs://b/r.yaml", "--out=/mnt/d"])


# ------------------------------------------------------------------------------------ schedule, docs


def test_the_scheduled_launch_uses_the_templates_parameters_with_since_last():
    launch = json.loads((DOCKER / "schedule" / "launch.json").read_text())["launchParameter"]
    given = launch["parameters"]
    assert given["since"] == "LAST"
    for parameter in metadata()["parameters"]:
        name = parameter["name"]
        assert name in given or parameter["isOptional"], name
        if name in given:
            assert all(re.search(regex, given[name]) for regex in parameter["regexes"]), name
    assert set(given) <= {p["name"] for p in metadata()["parameters"]}
    assert launch["containerSpecGcsPath"].startswith("gs://") and launch["environment"]["sdkContainerImage"]


def test_the_crontab_and_the_scripts_are_well_formed():
    entries = [line for line in (DOCKER / "schedule" / "crontab").read_text().splitlines() if line and line[0] != "#"]
    assert len(entries) == 1 and len(entries[0].split()) > 5
    assert "eo-etl build pipelines/" in entries[0] and entries[0].split("--since")[1].split()[0] == "LAST"
    assert (ROOT / entries[0].split("eo-etl build ")[1].split()[0]).is_file()
    assert subprocess.run(["sh", "-n", str(DOCKER / "schedule" / "cloud-scheduler.sh")]).returncode == 0
    compile((DOCKER / "schedule" / "airflow_dag.py").read_text(), "airflow_dag.py", "exec")  # Airflow not needed


def test_every_option_the_docs_name_is_a_beam_option():
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    known = {s.removeprefix("--") for action in parser._actions for s in action.option_strings}
    named = re.findall(r"--option ([A-Za-z0-9_]+)=", (DOCKER / "README.md").read_text())
    assert len(named) > 15
    assert sorted(set(named) - known) == []
