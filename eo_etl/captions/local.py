"""LLM captions in-process on a worker (a GPU one, ideally): a Beam ``RunInference`` model handler that loads
a local GGUF with llama-cpp-python and captions a batch of facts, with no server to run. Selected by the
recipe (``captions.kind: local`` with ``model_path``).

Everything but the call is the LLM path's (eo_etl/captions/llm.py): the same prompt (chat messages, or a
completion prompt with ``endpoint: completions``), the same checks and retries with a warmer temperature,
the same cache (a rerun never calls the model for facts it has seen; the model is loaded only when some
caption is missing). The model's name in every caption's provenance is the file's name.

This is the one captions module that imports Beam (``ModelHandler``, ``RunInference``). The stage's
function calls ``run_inference`` directly for each batch; ``LocalCaptions`` is the same handler as a
Beam transform, for pipelines that want RunInference's batching and model sharing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from eo_etl.captions.cache import CaptionCache
from eo_etl.captions.llm import CaptionError, LlmCaptioner
from eo_etl.sources.remote import RetryPolicy
from eo_etl.text import printable

SEED = 0  # llama.cpp's sampler seed; each request also sets its own (caption number, try)


class _InProcess(LlmCaptioner):
    """The LLM path with its request answered by a llama.cpp model in this process instead of a server."""

    def __init__(self, load: Callable[[], Any], **settings):
        self.load = load  # the Llama, loaded when first needed: a run that the cache answers loads nothing
        super().__init__(**settings)

    def _send(self, body: dict[str, Any]) -> str:
        with self._count_lock:
            self.requests_sent += 1
        llama = self.load()
        asked = {key: body[key] for key in ("max_tokens", "temperature", "seed")}
        if self.endpoint == "chat":
            text = llama.create_chat_completion(messages=body["messages"], **asked)["choices"][0]["message"]
            text = text["content"]
        else:
            text = llama.create_completion(prompt=body["prompt"], stop=body["stop"], **asked)["choices"][0]
            text = text["text"]
        return " ".join((text or "").split())


class LocalCaptionHandler(ModelHandler[Mapping[str, Any], PredictionResult, Any]):
    """Facts in, ``n`` checked captions (the LLM path's dicts: caption or flag, model, prompt version,
    parameters, created, cached) out, per element. ``loads`` counts models loaded by this copy."""

    def __init__(self, model_path: str, cache: CaptionCache, *, endpoint: str = "chat", prompt_version: str = "v1",
                 temperature: float = 0.0, max_tokens: int = 160, n: int = 1, checks: int = 3, max_chars: int = 400,
                 n_ctx: int = 2048, gpu_layers: int = -1, threads: int | None = None):  # fmt: skip
        super().__init__()
        self.model_path = str(model_path)
        self.cache = cache
        self.settings = {"model": Path(self.model_path).name, "endpoint": endpoint, "prompt_version": prompt_version,
                         "temperature": temperature, "max_tokens": max_tokens, "n": n, "checks": checks,
                         "max_chars": max_chars}  # fmt: skip
        self.n_ctx, self.gpu_layers, self.threads = n_ctx, gpu_layers, threads
        self.loads = 0
        self._model = None

    @classmethod
    def from_settings(cls, settings: Any, cache: CaptionCache) -> LocalCaptionHandler:
        """From the recipe's ``captions`` section (kind local)."""
        return cls(settings.model_path, cache, endpoint=settings.endpoint, prompt_version=settings.prompt_version,
                   temperature=settings.temperature, max_tokens=settings.max_tokens, n=settings.n,
                   checks=settings.checks, max_chars=settings.max_chars, n_ctx=settings.n_ctx,
                   gpu_layers=settings.gpu_layers)  # fmt: skip

    def load_model(self) -> Any:
        import llama_cpp  # heavy, and only where captions run locally

        if not Path(self.model_path).is_file():
            raise CaptionError(f"captions.model_path: {printable(repr(self.model_path), 200)} is not a file")
        # every layer on the GPU where llama.cpp was built with one; a CPU build runs them all on the CPU
        layers = self.gpu_layers if llama_cpp.llama_supports_gpu_offload() else 0
        self.loads += 1
        try:
            return llama_cpp.Llama(model_path=self.model_path, n_gpu_layers=layers, n_ctx=self.n_ctx, seed=SEED,
                                   n_threads=self.threads, verbose=False)  # fmt: skip
        except ValueError as error:  # not a GGUF llama.cpp can run: every caption would fail the same way
            raise CaptionError(f"captions.model_path: {printable(repr(self.model_path), 200)} could not be "
                               f"loaded: {printable(str(error), 200)}") from None  # fmt: skip

    def _loaded(self) -> Any:
        if self._model is None:
            self._model = self.load_model()
        return self._model

    def __getstate__(self) -> dict:  # a worker's copy loads its own model
        return {**self.__dict__, "_model": None, "loads": 0}

    def captioner(self, model: Any = None) -> LlmCaptioner:
        """The LLM path's captioner, answered by ``model`` (None: this copy's own, loaded when first needed)."""
        load = self._loaded if model is None else lambda: model
        return _InProcess(load, url=f"local://{self.settings['model']}",
                          cache=self.cache, concurrency=1, api_key_env=None, timeout_s=3600,
                          policy=RetryPolicy(attempts=1), **self.settings)  # fmt: skip

    def run_inference(self, batch: Sequence[Mapping[str, Any]], model: Any = None,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:  # fmt: skip
        answers = self.captioner(model).caption_all(batch)
        return [PredictionResult(facts, captions, self.settings["model"]) for facts, captions in zip(batch, answers)]

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 16}  # a batch is seconds of generation


class LocalCaptions(beam.PTransform):
    """Facts → (facts, captions) through ``RunInference`` with the local handler."""

    def __init__(self, handler: LocalCaptionHandler):
        super().__init__()
        self.handler = handler

    def expand(self, facts):
        return (facts | RunInference(self.handler)
                | beam.Map(lambda result: (result.example, result.inference)))  # fmt: skip
