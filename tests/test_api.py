"""The public library API: ``eo_etl.__all__`` as the README lists it, documented, light to import, and
leaving the application's logging alone; the PyTorch dataset's ``transforms``."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import eo_etl
from tests.datasets import place_sample, write_dataset

ROOT = Path(__file__).resolve().parents[1]


def readme_api() -> set[str]:
    """The names the README's "The library" list items define, each written `name`: …"""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The library\n", 1)[1].split("\n## ", 1)[0]
    items = [line for line in section.splitlines() if line.startswith("- ")]
    return {name for line in items for name in re.findall(r"`(\w+)`:", line)}


def test_all_is_the_api_the_readme_lists_and_each_name_is_documented():
    assert set(eo_etl.__all__) == readme_api()
    for name in eo_etl.__all__:
        value = getattr(eo_etl, name)
        assert inspect.getdoc(value), f"{name} has no docstring"
    assert eo_etl.build.__module__ == "eo_etl.build" and callable(eo_etl.build)
    assert "SampleId" in eo_etl.__all__ and eo_etl.SampleId.parse("454U_120R.s2.20240601").cell == "454U_120R"


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return done.stdout + done.stderr


def test_importing_eo_etl_loads_neither_beam_nor_torch_and_leaves_logging_alone():
    out = run_python(
        "import logging, sys\n"
        "import eo_etl, eo_etl.plan\n"  # planning needs no Beam
        "root = logging.getLogger()\n"
        "print(sorted(m for m in ('apache_beam', 'torch') if m in sys.modules), root.handlers, root.filters)\n"
        "import eo_etl.build, eo_etl.beam\n"  # Beam's import warns through the root logger (basicConfig)
        "print(root.handlers, root.filters, callable(eo_etl.build))\n"
        "help(eo_etl)\n"
    )
    lines = out.splitlines()
    assert lines[0] == "[] [] []"
    assert lines[1] == "[] [] True"
    assert "apitools" not in out  # Beam's warning, not shown
    assert "load_recipe" in out and "open_dataset" in out and "SampleId" in out  # help() documents the API


def test_the_torch_dataset_applies_its_transforms_to_each_item(tmp_path):
    root = write_dataset(tmp_path / "ds", [place_sample(k, -67.6 + k * 0.01, -47.85) for k in range(3)])

    def flip(item: dict) -> dict:
        return item | {"pixels": item["pixels"].flip(-1), "seen": True}

    plain = eo_etl.SampleDataset(str(root), normalize=False)
    flipped = eo_etl.SampleDataset(str(root), normalize=False, transforms=flip)
    assert len(flipped) == 3
    for i in range(3):
        assert flipped[i]["seen"] and "seen" not in plain[i]
        np.testing.assert_array_equal(flipped[i]["pixels"].numpy(), plain[i]["pixels"].numpy()[..., ::-1])
        assert flipped[i]["sample_id"] == plain[i]["sample_id"]


def test_a_sample_is_named_by_its_sample_id_in_messages():
    sample = place_sample(3, 10.0, 45.0)
    assert sample.key == str(sample.sample_id) == "0003U_0003R.s2.20190101"
    assert eo_etl.SampleId.parse(sample.key) == sample.sample_id
    sample.window_start = None
    assert sample.key == "0003U_0003R.s2"
