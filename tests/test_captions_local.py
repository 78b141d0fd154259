"""LLM captions in-process (captions.kind: local): the RunInference model handler loads the real
SmolLM2-135M GGUF (tests/llm_server.py finds it) with llama-cpp-python, on the CPU here (``gpu_layers`` is
used where llama.cpp has a GPU; no GPU test runs here). ``CountingLlama`` is the real model with its loads
and generations (``create_completion``, which chat completions call too) counted, so a test can say that a
rerun answered from the cache never called it. Model output is not deterministic: the tests assert
properties (provenance, the LLM path's checks), not text."""

from __future__ import annotations

import json

import apache_beam as beam
import llama_cpp
import pandas as pd
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that

from eo_etl.captions.cache import CaptionCache
from eo_etl.captions.llm import CaptionError, completion_prompt, load_prompt, problem
from eo_etl.captions.local import LocalCaptionHandler, LocalCaptions
from eo_etl.captions.stage import STAGE as CAPTIONS
from eo_etl.labels.landcover import STAGE as LANDCOVER
from eo_etl.recipe import RecipeError
from eo_etl.stages.run import run_stage
from tests.datasets import place_sample, write_dataset
from tests.llm_server import model_path
from tests.test_captions import captions_recipe
from tests.test_captions_llm import sample_facts

MODEL = model_path().name
CALLS = {"loads": 0, "generations": 0, "prompts": []}
LOADED: list = []  # closed after each test: llama.cpp's own clean-up at interpreter exit prints a traceback


class CountingLlama(llama_cpp.Llama):
    def __init__(self, *args, **kwargs):
        CALLS["loads"] += 1
        super().__init__(*args, **kwargs)
        LOADED.append(self)

    def create_completion(self, *args, **kwargs):  # chat completions generate through it too
        CALLS["generations"] += 1
        CALLS["prompts"].append(kwargs.get("prompt", args[0] if args else None))
        return super().create_completion(*args, **kwargs)


@pytest.fixture(autouse=True)
def counting(monkeypatch):
    monkeypatch.setattr(llama_cpp, "Llama", CountingLlama)
    CALLS.update(loads=0, generations=0, prompts=[])
    yield CALLS
    while LOADED:
        LOADED.pop().close()


def handler(folder, **settings) -> LocalCaptionHandler:
    return LocalCaptionHandler(model_path(), CaptionCache(folder), **{"max_tokens": 32, "checks": 1, **settings})


def assert_checked(answer: dict, facts: dict) -> None:
    """Provenance, and a caption the LLM path's checks keep, or its flag."""
    assert answer["model"] == MODEL and answer["prompt_version"] == "v1" and answer["created"]
    assert answer["parameters"]["max_tokens"] == 32
    if answer["caption"] is None:
        assert answer["flag"].startswith("rejected: ")
    else:
        assert answer["flag"] is None and problem(answer["caption"], facts, 400) is None


def test_the_handler_captions_a_batch_in_process_and_a_rerun_is_answered_by_the_cache(tmp_path, counting):
    facts = [sample_facts(0), sample_facts(1)]
    results = list(handler(tmp_path, endpoint="completions").run_inference(facts))
    assert [r.example for r in results] == facts and all(r.model_id == MODEL for r in results)
    for result in results:
        assert len(result.inference) == 1 and not result.inference[0]["cached"]
        assert_checked(result.inference[0], result.example)
    # the prompt is the LLM path's, built by its own function
    assert counting["prompts"] == [completion_prompt(load_prompt("v1"), f) for f in facts]
    assert counting == {"loads": 1, "generations": 2, "prompts": counting["prompts"]}
    # a new worker with the same cache: every answer cached, the model neither loaded nor called
    again = handler(tmp_path, endpoint="completions")
    rerun = list(again.run_inference(facts))
    assert [r.inference[0]["cached"] for r in rerun] == [True, True] and again.loads == 0
    assert [r.inference[0]["caption"] for r in rerun] == [r.inference[0]["caption"] for r in results]
    assert counting["loads"] == 1 and counting["generations"] == 2


def test_run_inference_in_a_beam_pipeline_returns_checked_captions(tmp_path, counting):
    facts = [sample_facts(0), sample_facts(1)]
    local = handler(tmp_path)  # chat, through the GGUF's chat template

    def check(results):
        assert len(results) == 2
        for result in results:
            assert result.model_id == MODEL and len(result.inference) == 1
            assert_checked(result.inference[0], result.example)
        assert sorted(r.example["sample_id"] for r in results) == ["s0", "s1"]

    with beam.Pipeline(runner="DirectRunner") as pipeline:
        results = pipeline | beam.Create(facts) | RunInference(local)
        assert_that(results, check)
    assert counting["generations"] == 2
    # the same handler as a transform over facts: (facts, captions), all from the cache now
    with beam.Pipeline(runner="DirectRunner") as pipeline:
        pairs = pipeline | beam.Create(facts) | LocalCaptions(local)
        assert_that(pairs | beam.Map(lambda pair: all(c["cached"] for c in pair[1])), lambda ok: ok == [True, True])
    assert counting["generations"] == 2


def test_the_captions_stage_runs_the_local_model_when_the_recipe_says_so(tmp_path, counting):
    root = write_dataset(tmp_path / "ds", [place_sample(0, -98.0, 38.5)])
    recipe = captions_recipe(kind="local", model_path=str(model_path()), max_tokens=32, checks=1, n_ctx=2048,
                             gpu_layers=0)  # fmt: skip
    run_stage(LANDCOVER, recipe, root)
    run_stage(CAPTIONS, recipe, root)
    (captions,) = pd.read_parquet(root / "captions.parquet")["captions"]
    assert [c["variant"] for c in captions] == ["llm-0"]
    assert captions[0]["model"] == MODEL and captions[0]["prompt_version"] == "v1" and captions[0]["created"]
    assert json.loads(captions[0]["parameters"])["max_tokens"] == 32
    assert counting["loads"] == 1 and counting["generations"] == 1
    # the stage's work forgotten (--redo): the cache answers, the model is not even loaded
    assert run_stage(CAPTIONS, recipe, root, redo=True).todo == 1
    assert counting["loads"] == 1 and counting["generations"] == 1


def test_the_local_kind_needs_a_model_file(tmp_path):
    with pytest.raises(RecipeError, match="model_path"):
        captions_recipe(kind="local")
    (tmp_path / "not.gguf").write_bytes(b"no model here")
    for path in (tmp_path / "missing.gguf", tmp_path / "not.gguf"):  # one line, nothing cached
        local = LocalCaptionHandler(path, CaptionCache(tmp_path / "cache"))
        with pytest.raises(CaptionError, match=r"^captions\.model_path: .*gguf") as error:
            local.run_inference([sample_facts(0)])
        assert "\n" not in str(error.value)
    assert not (tmp_path / "cache").exists()
