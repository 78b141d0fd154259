"""The per-service limits of a recipe (``runner.limits``): requests paced to a rate and bounded in flight,
per host, shared out between the workers of a Beam build."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import requests
import yaml

from eo_etl.build import build
from eo_etl.recipe import load_recipe, parse_recipe
from eo_etl.recipe.models import ServiceLimit
from eo_etl.sources.remote import HostLimiter, RetryPolicy
from tests.servers import Faults, faulty_proxy
from tests.test_pipeline import archive, write_recipe  # noqa: F401  (archive is a fixture)


def test_a_hosts_requests_are_paced_and_bounded_across_threads():
    limiter = HostLimiter(limits={"api.example:443": (20.0, 2)})
    in_flight, most = 0, 0
    lock = threading.Lock()

    def call(_):
        nonlocal in_flight, most
        with limiter.slot("https://api.example:443/search"):
            with lock:
                in_flight += 1
                most = max(most, in_flight)
            time.sleep(0.01)
            with lock:
                in_flight -= 1
        return time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        times = sorted(pool.map(call, range(11)))
    assert most <= 2
    assert times[-1] - times[0] >= 10 / 20 - 0.02  # 11 requests at 20 a second span half a second


def test_other_hosts_and_gdal_paths_are_limited_by_their_own_host():
    limiter = HostLimiter(per_host=1, limits={"slow.example": (1.0, 1)})
    start = time.monotonic()
    for _ in range(5):  # unlimited rate elsewhere; /vsicurl/ paths count under the host they name
        with limiter.slot("/vsicurl/https://fast.example/a.tif"):
            pass
    with limiter.slot("https://slow.example/x"):
        pass
    assert time.monotonic() - start < 0.5
    assert set(limiter._slots) == {"fast.example", "slow.example"}


def test_workers_share_the_recipes_limits():
    limiter = HostLimiter.share({"h": ServiceLimit(qps=10, concurrency=5), "g": ServiceLimit(concurrency=1)}, 2)
    assert limiter.limits == {"h": (5.0, 3), "g": (None, 1)}


def test_a_beam_builds_searches_keep_to_the_stac_apis_rate(archive):  # noqa: F811
    api, _, folder = archive
    faults = Faults()
    with faulty_proxy(api, faults) as proxy:
        host = proxy.removeprefix("http://")
        recipe = load_recipe(write_recipe(folder, proxy))
        limited = recipe.runner.model_copy(update={"limits": {host: ServiceLimit(qps=2, concurrency=1)}})
        report = build(recipe.model_copy(update={"runner": limited}))
    searches = sorted(t for t, path in faults.requests if path == "/search")
    assert len(searches) == 6  # 12 cells in batches of 2 over 2 workers
    # 2 a second in all, 1 a second in each worker: no 0.7 s (a second less what a loaded machine may delay
    # a request on its way) holds more than one search of each worker
    assert max(sum(start <= t < start + 0.7 for t in searches) for start in searches) <= 2
    assert searches[-1] - searches[0] >= 1.8  # at least three searches in some worker, one second apart
    assert set(pd.read_parquet(report.output / "index.parquet").status) == {"ok"}
    assert yaml.safe_load(report.output.joinpath("recipe.json").read_text())["runner"]["limits"][host]["qps"] == 2


def test_retry_budgets_come_per_host_from_the_recipe_and_retries_are_counted_per_host():
    from tests.test_recipe import problems_of, recipe_with

    limits = {"store.example": {"attempts": 3, "backoff_s": 0.001, "max_backoff_s": 0.002}}
    recipe = parse_recipe(recipe_with(runner={"limits": limits}))
    policy = RetryPolicy.of(recipe.runner.limits)
    calls = []

    def dropped():
        calls.append(time.monotonic())
        raise requests.ConnectionError("Connection reset by peer")

    with pytest.raises(requests.ConnectionError):
        policy.call(dropped, host="store.example")
    assert len(calls) == 3 and policy.retries == 2 and policy.by_host == {"store.example": 2}
    # hosts the recipe does not list get the defaults, which are ServiceLimit's
    default = ServiceLimit()
    assert policy.budget("other.example") == (default.attempts, default.backoff_s, default.max_backoff_s) == (8, 1, 60)
    # bounded: a budget that would retry for hours is refused with its field named
    problems = problems_of(recipe_with(runner={"limits": {"h": {"attempts": 1000}}, "max_failed_fraction": 2}))
    assert any("runner.limits.h.attempts" in p for p in problems) and any("max_failed_fraction" in p for p in problems)
