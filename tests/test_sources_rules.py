"""The small rules acquisition stands on: patch grids, error classes, host limits, quality masks."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import rasterio
import requests
from pystac_client.exceptions import APIError

from eo_etl.sources import masks
from eo_etl.sources.patch_grid import patch_grid
from eo_etl.sources.profile import find_profile
from eo_etl.sources.remote import HostLimiter, RetryPolicy, is_transient


def test_the_default_patch_is_the_major_tom_footprint_on_the_source_lattice():
    footprint = (600003.0, 4690007.0, 610683.0, 4700687.0)  # 10,680 m, off the 10 m lattice
    grid = patch_grid(32719, footprint, 10.0, 1068, anchor=(600000.0, 4700020.0))
    left, bottom, right, top = grid.bounds
    assert (grid.width, grid.height) == (1068, 1068) and right - left == 10680
    assert (left - 600000) % 10 == 0 and (top - 4700020) % 10 == 0
    assert abs(left - footprint[0]) <= 5 and abs(top - footprint[3]) <= 5  # rounded, not shifted


def test_a_smaller_patch_is_centred_on_the_footprint():
    grid = patch_grid(32633, (0.0, 0.0, 10680.0, 10680.0), 10.0, 64)
    left, bottom, right, top = grid.bounds
    assert (left + right) / 2 == pytest.approx(5340, abs=5) and (bottom + top) / 2 == pytest.approx(5340, abs=5)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (rasterio.errors.RasterioIOError("HTTP response code: 429"), True),
        (rasterio.errors.RasterioIOError("HTTP response code: 503"), True),
        (rasterio.errors.RasterioIOError("HTTP response code: 404"), False),
        (rasterio.errors.RasterioIOError("'x.tif' not recognized as being in a supported file format."), False),
        (requests.ConnectionError("refused"), True),
        (TimeoutError(), True),
        (ValueError("bad"), False),
    ],
)
def test_which_errors_are_worth_retrying(error, transient):
    assert is_transient(error) is transient


def test_a_dropped_connection_wrapped_by_pystac_client_is_retried():
    try:
        try:
            raise requests.ConnectionError("refused")
        except requests.ConnectionError as inner:
            raise APIError(str(inner))  # noqa: B904 -- what pystac-client does
    except APIError as wrapped:
        assert is_transient(wrapped)
    error = APIError("not found")
    error.status_code = 404
    assert not is_transient(error)


def test_the_retry_policy_retries_transient_errors_then_gives_up():
    policy = RetryPolicy(attempts=3, initial_s=0.001, max_s=0.002)
    calls = []

    def flaky():
        calls.append(1)
        raise rasterio.errors.RasterioIOError("HTTP response code: 429")

    with pytest.raises(rasterio.errors.RasterioIOError):
        policy.call(flaky)
    assert len(calls) == 3 and policy.retries == 2


def test_the_host_limiter_holds_requests_to_one_host_to_its_limit():
    limiter = HostLimiter(per_host=2)
    active, peak, lock = [0], [0], threading.Lock()

    def request(url):
        with limiter.slot(url):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.02)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=request, args=("http://a.example/x.tif",)) for _ in range(6)]
    threads += [threading.Thread(target=request, args=("http://b.example/x.tif",)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 4  # two per host, two hosts


def test_quality_rules_by_class_and_by_bit():
    scl_rule = find_profile("sentinel-2-l2a").quality
    scl = np.array([[0, 4, 9], [3, 8, 10]])
    assert masks.cloud_pixels(scl_rule, scl).tolist() == [[False, False, True], [True, True, True]]
    assert masks.missing_pixels(scl_rule, scl).tolist() == [[True, False, False], [False, False, False]]
    qa_rule = find_profile("landsat-c2-l2").quality
    qa = np.array([1, 1 << 6, 1 << 3 | 1 << 6, 1 << 4])  # fill, clear, cloud, shadow
    assert masks.cloud_pixels(qa_rule, qa).tolist() == [False, False, True, True]
    assert masks.missing_pixels(qa_rule, qa).tolist() == [True, False, False, False]
    valid = ~masks.missing_pixels(qa_rule, qa)
    assert masks.cloud_fraction(masks.cloud_pixels(qa_rule, qa), valid) == pytest.approx(2 / 3)
