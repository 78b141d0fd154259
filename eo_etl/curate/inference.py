"""Patch embeddings as a Beam ``RunInference`` step: a model handler around the embed stage's encoder, so the
model (on a GPU where there is one) is loaded once per worker process, shared by its threads, and is a step of
its own between reading the pixels and recording the vectors (eo_etl.pipeline.stages runs the three).

The same pattern as captions' local model (eo_etl/captions/local.py): the handler wraps the functions the stage
uses without Beam (``open_encoder``, ``embed_stacks``), so both paths give the same vectors. This is the one
curation module that imports Beam; the stage's module (eo_etl/curate/embed.py) names it by its path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from eo_etl.curate.embed import Encoder, embed_stacks, open_encoder, pick_device
from eo_etl.recipe.models import Embedding


class EmbedHandler(ModelHandler[list[np.ndarray], PredictionResult, Encoder]):
    """A batch's stacks of fragments (N, 3, H, W; 0-1) in, their vectors (N, D) out, per element; the model's
    name as the result's ``model_id``. ``loads`` counts the encoders this copy loaded."""

    def __init__(self, settings: Embedding):
        super().__init__()
        self.settings = settings
        self.device: str | None = None
        self.loads = 0

    def load_model(self) -> Encoder:
        encoder, self.device = open_encoder(self.settings)
        self.loads += 1
        return encoder

    def run_inference(self, batch: Sequence[list[np.ndarray]], model: Encoder,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:  # fmt: skip
        # this copy may share a model another copy loaded (RunInference shares it between a worker's threads)
        device = self.device or pick_device(self.settings.device)
        return [PredictionResult(stacks, embed_stacks(model, stacks, device), model.name) for stacks in batch]

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 1}  # an element is already a stage batch of fragments

    def get_metrics_namespace(self) -> str:
        return "RunInference.embed"
