"""Transient faults on image hosts never cost a sample: real COGs served by a file server that breaks a seeded
share of its requests (503, 429 with Retry-After: 0, connection resets, empty replies, slow answers), behind a
real STAC API (`rustac serve`, behind a proxy that breaks its requests alike), read by the real readers."""

from __future__ import annotations

import subprocess
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from eo_etl.build import build
from eo_etl.demo import sentinel2_item
from eo_etl.plan import plan
from eo_etl.recipe import load_recipe
from eo_etl.sample import FAILED, OK, TRANSIENT
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.sources.remote import RetryPolicy, forget, host_of
from tests.imagery import write_item_collection
from tests.servers import EMPTY, RANDOM_FAULTS, RESET, Faults, faulty_proxy, file_server, free_port, stac_api
from tests.test_acquire import acquire, recipe
from tests.test_pipeline import EO_ETL, file_digests, write_recipe

WHEN = datetime(2019, 3, 15, 14, 17, 29, tzinfo=UTC)


def quick(attempts: int = 10) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, initial_s=0.01, max_s=0.05)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """Two tiles of one Sentinel-2 pass as COGs, on a file server and in a STAC API, both breaking requests as
    ``faults`` says (none until a test sets a rate)."""
    root = tmp_path_factory.mktemp("faulty")
    faults = Faults(slow_s=0.2)
    with file_server(root, faults) as files:
        items = [
            sentinel2_item(root, "S2B_west", WHEN, columns=slice(0, 150), href_base=files),
            sentinel2_item(root, "S2B_east", WHEN, columns=slice(150, None), href_base=files),
        ]
        with stac_api(write_item_collection(root / "items.json", items)) as api, faulty_proxy(api, faults) as proxy:
            yield {"root": root, "files": files, "api": proxy, "faults": faults}


def fresh(faulty, rate: float = 0.0, seed: int = 0) -> None:
    """A new run: the faults drawn anew from ``seed``, and nothing GDAL remembers of the files (one process)."""
    faults = faulty["faults"]
    faults.rate, faults.seed = rate, seed
    faults.sent.clear()
    faults.asked.clear()
    forget(f"/vsicurl/{faulty['files']}/")


def assert_same(samples: dict, clean: dict) -> None:
    assert samples.keys() == clean.keys()
    for cell, sample in samples.items():
        assert sample.record() == clean[cell].record(), cell
        if clean[cell].status == OK:
            np.testing.assert_array_equal(sample.pixels, clean[cell].pixels, err_msg=cell)


def test_at_15_percent_faults_every_seed_acquires_what_a_clean_run_does(faulty):
    fresh(faulty)
    clean = acquire(recipe(faulty["api"]), quick())
    assert sum(s.status == OK for s in clean.values()) >= 10
    sent, retries = Counter(), Counter()
    for seed in range(20):
        fresh(faulty, 0.15, seed)
        policy = quick()
        samples = acquire(recipe(faulty["api"]), policy)
        assert not [s.reason for s in samples.values() if s.status == FAILED], f"seed {seed}"
        assert_same(samples, clean)
        sent += faulty["faults"].counted()
        retries += policy.by_host
    assert set(sent) == set(RANDOM_FAULTS) and sum(sent.values()) >= 60, sent  # faults were met, of every kind
    assert retries[host_of(faulty["files"])] > 0 and retries[host_of(faulty["api"])] > 0, retries


@pytest.mark.parametrize(
    "fault",
    [(503,), (None, EMPTY, EMPTY), (None, RESET, RESET)],
    ids=["open answers 503", "header read meets empty replies", "header read meets resets"],
)
def test_one_fault_fails_one_cell_at_most(faulty, fault):
    # One try per read: the fault fails the first cell to read B02 (transient, so a rerun tries it again);
    # GDAL must not remember it for the cells after.
    fresh(faulty)
    r = recipe(faulty["api"])
    clean = acquire(r, quick())
    fresh(faulty)
    faulty["faults"].plan("/S2B_west/B02.tif", *fault)
    samples = {s.cell: s for s in acquire_source(r, r.sources[0], cells_of(r, plan(r)), workers=1, policy=quick(1))}
    assert faulty["faults"].sent["/S2B_west/B02.tif"] == [f for f in fault if f is not None]
    failed = [s for s in samples.values() if s.status == FAILED]
    assert len(failed) == 1, [s.reason for s in failed]
    assert failed[0].reason.startswith(f"{TRANSIENT}ReadError: band B02 of {faulty['files']}/S2B_west/B02.tif")
    assert_same(
        {c: s for c, s in samples.items() if s.status != FAILED}, {c: clean[c] for c in samples if c != failed[0].cell}
    )


def test_a_refused_read_that_gdal_words_without_its_status_fails_at_once_and_not_as_transient(faulty):
    # The header's HEAD passes and GDAL's two GETs are refused: GDAL says "not recognized as being in a supported
    # file format", no status; the check's GET is refused too. A retry would ask again for what was refused.
    fresh(faulty)
    r = recipe(faulty["api"])
    faulty["faults"].plan("/S2B_west/B02.tif", None, 403, 403, 403)
    policy = quick()
    samples = list(acquire_source(r, r.sources[0], cells_of(r, plan(r)), workers=1, policy=policy))
    assert faulty["faults"].sent["/S2B_west/B02.tif"] == [403] * 3  # every planned answer was asked for
    [failed] = [s for s in samples if s.status == FAILED]
    assert failed.reason.startswith(f"ReadError: band B02 of {faulty['files']}/S2B_west/B02.tif: ")
    assert failed.reason.endswith("(the server answers HTTP 403)")  # not "transient: …", which a rerun retries
    assert policy.retries == 0 and not policy.by_host


def test_a_file_that_is_not_a_raster_fails_at_once_with_its_reason(tmp_path):
    with file_server(tmp_path) as files:
        item = sentinel2_item(tmp_path, "html", WHEN, href_base=files)
        (tmp_path / "html" / "B04.tif").write_text("<html><body>Access denied</body></html>")
        with stac_api(write_item_collection(tmp_path / "items.json", [item])) as api:
            policy = quick()
            samples = acquire(recipe(api), policy)
    failed = [s for s in samples.values() if s.status == FAILED]
    assert failed and not [s for s in samples.values() if s.status == OK]
    for sample in failed:
        assert sample.reason.startswith(f"ReadError: band B04 of {files}/html/B04.tif: not a raster"), sample.reason
    assert policy.retries == 0 and not policy.by_host


def test_at_40_percent_faults_what_fails_is_transient_and_one_rerun_ends_as_a_clean_build(tmp_path):
    faults = Faults(slow_s=0.2)
    with file_server(tmp_path / "cogs", faults) as files:
        items = [sentinel2_item(tmp_path / "cogs", "S2B_demo", WHEN, href_base=files)]
        with stac_api(write_item_collection(tmp_path / "items.json", items)) as api, faulty_proxy(api, faults) as proxy:
            hosts = (host_of(files), host_of(proxy))

            def limits(attempts: int) -> dict:
                return {"limits": {h: {"attempts": attempts, "backoff_s": 0.01, "max_backoff_s": 0.05} for h in hosts}}

            outputs = {"path": str(tmp_path / "clean"), "formats": ["zarr", "video"], "shard_size": 4}
            clean = build(load_recipe(write_recipe(tmp_path, proxy, outputs=outputs)))
            faults.rate, faults.seed = 0.4, 7  # one try a read: whatever meets a fault fails
            short = write_recipe(tmp_path, proxy, runner={"kind": "direct", "workers": 2, "threads": 2, **limits(1)})
            first = build(load_recipe(short))
            index = pd.read_parquet(first.output / "index.parquet")
            failed = index[index.status == FAILED]
            assert len(failed) and all(reason.startswith(TRANSIENT) for reason in failed.reason), list(failed.reason)
            assert first.failed and f"{len(failed)} failed transiently" in first.stages[1].detail
            sent = faults.counted()

            # still 40% faults, with the most tries a recipe allows: every cell gets through
            again = build(load_recipe(write_recipe(tmp_path, proxy, runner={"kind": "direct", **limits(20)})))
    assert sum(sent.values()) > 0 and faults.counted() != sent  # faults were met in both builds
    assert not again.failed and again.metrics["cells already finished"] == 12 - len(failed)
    per_host = {k.removeprefix("retries: "): v for k, v in again.metrics.items() if k.startswith("retries: ")}
    assert set(per_host) <= set(hosts) and sum(per_host.values()) == again.metrics["retries"] > 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(clean.output / "index.parquet"), pd.read_parquet(again.output / "index.parquet")
    )
    assert file_digests(clean.output / "pixels.zarr") == file_digests(again.output / "pixels.zarr")
    assert file_digests(clean.output / "video") == file_digests(again.output / "video")


def ours(stderr: str) -> list[str]:
    """stderr's lines less the chatter of Beam's DirectRunner workers as they start (not eo-etl's)."""
    chatter = ("WARNING:root:apitools not found", "INFO:__main__:Logging handler created")
    return [line for line in stderr.strip().splitlines() if not line.startswith(chatter)]


def test_a_build_against_an_unreachable_catalogue_fails_with_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    runner = {"kind": "direct", "workers": 1, "limits": {host_of(url): {"attempts": 2, "backoff_s": 0.01}}}
    result = subprocess.run([EO_ETL, "build", str(write_recipe(tmp_path, url, runner=runner))], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = ours(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: 12 of 12 cells failed (too many"), result.stderr
    assert f"12 × {TRANSIENT}search failed: ConnectionError: {url} cannot be reached (" in lines[0]
    assert "Connection refused" in lines[0]
    assert "✗ acquire" in result.stdout and "Traceback" not in result.stderr
    assert (tmp_path / "demo" / "index.parquet").exists()  # the dataset is written: nothing is lost


def test_a_build_under_the_failure_threshold_exits_0_and_reports_its_failures(tmp_path):
    faults = Faults()
    with file_server(tmp_path / "cogs", faults) as files:
        items = [sentinel2_item(tmp_path / "cogs", "S2B_demo", WHEN, href_base=files)]
        with stac_api(write_item_collection(tmp_path / "items.json", items)) as api:
            faults.plan("/S2B_demo/B03.tif", 404)  # the first cell to read B03 fails; a 404 is not retried
            runner = {"kind": "direct", "workers": 1, "threads": 1, "max_failed_fraction": 0.1}
            result = subprocess.run([EO_ETL, "build", str(write_recipe(tmp_path, api, runner=runner))],
                                    cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "✓ acquire" in result.stdout and "11 ok, 0 rejected, 1 failed" in result.stdout
    [line] = ours(result.stderr)
    assert line.startswith(
        "warning: 1 of 12 cells failed (runner.max_failed_fraction is 0.1): 1 × ReadError: band B03 of"
    )
    assert line.endswith("/S2B_demo/B03.tif: HTTP response code: 404")
