"""Servers on loopback for tests: `rustac serve` (a real STAC API), a static file server with HTTP range
requests (what GDAL reads COGs through), a proxy that puts chosen failures in front of either, and stubs
of Earth Engine's REST API and of an Overpass API (services with no offline counterpart).

Faults are real HTTP answers (429, 503, 404) sent by a real server, or real broken connections (reset, closed
without a reply), so the client code under test takes its production path. Besides faults planned per path,
``Faults(rate=…, seed=…)`` breaks a random share of all requests, as an object store under load does.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

import numpy as np
from RangeHTTPServer import RangeRequestHandler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read().decode()}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


@contextmanager
def stac_api(*hrefs: Path) -> Iterator[str]:
    """`rustac serve` (in-memory backend) loaded with item collections; yields the API root URL."""
    port = free_port()
    rustac = Path(sys.executable).parent / "rustac"
    process = subprocess.Popen(
        [str(rustac), "serve", "--addr", f"127.0.0.1:{port}", "--create-collections", *map(str, hrefs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


RESET, EMPTY, SLOW = "reset", "empty", "slow"  # faults that are not a status: a reset, no reply, a late answer
RANDOM_FAULTS = (503, 429, RESET, EMPTY, SLOW)


STALL_MAX_S = 30.0  # how long a stalled answer waits at most (clients give up after 60 s)


class Faults:
    """Planned failures by URL path: each request to a path takes the next fault from its list (then OK). A
    fault is a status, or RESET (the connection reset), EMPTY (closed without a reply) or SLOW (answered
    ``slow_s`` late). With ``rate``, that share of every other request meets one of ``kinds``, drawn from
    ``seed`` and the request itself (path, range, how many times it was asked), so that a seed decides."""

    def __init__(self, rate: float = 0.0, seed: int = 0, kinds=RANDOM_FAULTS, slow_s: float = 0.3):
        self.planned: dict[str, list[int | str | None]] = defaultdict(list)
        self.sent: dict[str, list[int | str]] = defaultdict(list)
        self.rate, self.seed, self.kinds, self.slow_s = rate, seed, tuple(kinds), slow_s
        self.delay_s = 0.0  # before every answer: a slow network
        # cleared: every answer waits until it is set again (a stalled network), STALL_MAX_S at most, under the
        # clients' timeout, so that a test can hold a build mid-run for as long as another step takes
        self.flowing = threading.Event()
        self.flowing.set()
        self.requests: list[tuple[float, str]] = []  # (monotonic time, path) of every request
        self.asked: Counter = Counter()  # (path, range) → times asked
        self.lock = threading.Lock()

    def plan(self, path: str, *faults: int | str | None) -> None:
        """The next requests to ``path`` meet ``faults`` in order; a None lets its request through."""
        with self.lock:
            self.planned[path].extend(faults)

    def next(self, path: str, byte_range: str = "") -> int | str | None:
        with self.lock:
            if self.planned.get(path):
                fault = self.planned[path].pop(0)
            else:
                self.asked[path, byte_range] += 1
                draw = random.Random(f"{self.seed}:{path}:{byte_range}:{self.asked[path, byte_range]}")
                fault = draw.choice(self.kinds) if self.rate and draw.random() < self.rate else None
            if fault is not None:
                self.sent[path].append(fault)
            return fault

    def counted(self) -> Counter:
        """How many of each fault were sent, over all paths."""
        with self.lock:
            return Counter(fault for faults in self.sent.values() for fault in faults)


def _answer_fault(handler: BaseHTTPRequestHandler, faults: Faults, key: str | None = None) -> bool:
    """Send the next fault for ``key`` (the request's path by default); False when there is none (a SLOW
    fault only delays the answer)."""
    path = handler.path.split("?")[0]
    with faults.lock:
        faults.requests.append((time.monotonic(), path))
    faults.flowing.wait(timeout=STALL_MAX_S)
    time.sleep(faults.delay_s)
    fault = faults.next(key or path, handler.headers.get("Range", ""))
    if fault is None:
        return False
    if fault == SLOW:
        time.sleep(faults.slow_s)
        return False
    handler.close_connection = True
    if fault == RESET:  # SO_LINGER 0: closing sends RST, the client sees "connection reset by peer"
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.rfile.close()  # the socket's last reference but one: closing it now resets, not a polite FIN
        handler.connection.close()
        return True
    if fault == EMPTY:  # closed before a byte of the answer: curl says "Empty reply from server"
        return True
    handler.send_response(fault)
    if fault == 429:
        handler.send_header("Retry-After", "0")
    handler.send_header("Content-Length", "0")
    handler.end_headers()
    return True


class _FileHandler(RangeRequestHandler):
    def __init__(self, *args, faults: Faults, **kwargs):
        self.faults = faults
        super().__init__(*args, **kwargs)

    def do_GET(self):
        if not _answer_fault(self, self.faults):
            super().do_GET()

    def do_HEAD(self):
        if not _answer_fault(self, self.faults):
            super().do_HEAD()

    def send_head(self):
        # Suffix ranges ("the last N bytes", RFC 9110), which object stores serve and zarr's shard index
        # reads use: rewritten to the explicit range RangeHTTPServer understands.
        suffix = re.fullmatch(r"bytes=-(\d+)", self.headers.get("Range", "").strip())
        path = self.translate_path(self.path)
        if suffix and os.path.isfile(path):
            size = os.path.getsize(path)
            del self.headers["Range"]
            self.headers["Range"] = f"bytes={max(size - int(suffix.group(1)), 0)}-"
        return super().send_head()

    def log_message(self, *args):
        pass


class _ProxyHandler(BaseHTTPRequestHandler):
    def __init__(self, *args, upstream: str, faults: Faults, **kwargs):
        self.upstream, self.faults = upstream, faults
        super().__init__(*args, **kwargs)

    def _forward(self, body: bytes | None = None):
        if _answer_fault(self, self.faults):
            return
        request = urllib.request.Request(self.upstream + self.path, data=body, method=self.command)
        if self.headers.get("Content-Type"):
            request.add_header("Content-Type", self.headers["Content-Type"])
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read().replace(self.upstream.encode(), self._own_root().encode())
            self.send_response(response.status)
            self.send_header("Content-Type", response.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def _own_root(self) -> str:
        return f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"

    def do_GET(self):
        self._forward()

    def do_POST(self):
        self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def log_message(self, *args):
        pass


@contextmanager
def _serve(handler) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def file_server(root: Path, faults: Faults | None = None, *, latency_s: float = 0.0) -> Iterator[str]:
    """Files under ``root`` over HTTP with range requests; yields the base URL. ``latency_s``: every request is
    answered that late (an object store across a network; ``faults.requests`` counts the requests)."""
    faults = faults or Faults()
    faults.delay_s = max(faults.delay_s, latency_s)
    with _serve(partial(_FileHandler, directory=str(root), faults=faults)) as url:
        yield url


@contextmanager
def faulty_proxy(upstream: str, faults: Faults) -> Iterator[str]:
    """A proxy to ``upstream`` that answers the planned faults first; links are rewritten to itself."""
    with _serve(partial(_ProxyHandler, upstream=upstream, faults=faults)) as url:
        yield url


class _EarthEngineStubHandler(BaseHTTPRequestHandler):
    """Earth Engine's REST protocol, as far as eo-etl uses it: the discovery document and the algorithm list
    that earthengine-api ships for its own tests, then value:compute and image:computePixels answered by
    the test's functions. Every request body is recorded."""

    def __init__(self, *args, stub: EarthEngineStub, **kwargs):
        self.stub = stub
        super().__init__(*args, **kwargs)

    def _send(self, status: int, payload: bytes, content_type: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        path = urllib.parse.unquote(self.path.split("?")[0])
        if path.startswith("/$discovery/rest"):
            self._send(200, self.stub.discovery())
        elif path.endswith("/algorithms"):
            self._send(200, self.stub.algorithms())
        else:
            self._send(404, b"{}")

    def do_POST(self):
        path = urllib.parse.unquote(self.path.split("?")[0])
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        kind = path.rsplit(":", 1)[-1]  # "compute" (value:compute) or "computePixels"
        if _answer_fault(self, self.stub.faults, kind):
            return
        self.stub.requests.append((kind, body))
        try:
            if kind == "compute":
                self._send(200, json.dumps({"result": self.stub.answer_value(body)}).encode())
            elif kind == "computePixels":
                buffer = io.BytesIO()
                np.save(buffer, self.stub.answer_pixels(body), allow_pickle=False)
                self._send(200, buffer.getvalue(), "application/octet-stream")
            else:
                self._send(404, b"{}")
        except Exception as error:  # the test's answer failed: say so as the server would
            message = json.dumps({"error": {"code": 400, "message": str(error), "status": "INVALID_ARGUMENT"}})
            self._send(400, message.encode())

    def log_message(self, *args):
        pass


class EarthEngineStub:
    """A stand-in for Earth Engine on loopback (no Earth Engine can be reached offline). The client code
    under test is the real earthengine-api, over HTTP."""

    def __init__(self, answer_value, answer_pixels):
        self.answer_value, self.answer_pixels = answer_value, answer_pixels
        self.faults = Faults()
        self.requests: list[tuple[str, dict]] = []
        self.url = ""

    def discovery(self) -> bytes:
        text = (files("ee") / "tests" / "cloud_api_discovery_document.json").read_text()
        return text.replace("https://earthengine.googleapis.com/", self.url + "/").encode()

    def algorithms(self) -> bytes:
        return (files("ee") / "tests" / "algorithms.json").read_bytes()

    @contextmanager
    def serve(self) -> Iterator[str]:
        with _serve(partial(_EarthEngineStubHandler, stub=self)) as url:
            self.url = url
            yield url


OVERPASS_STATUS = """Connected as: 2130706433
Current time: {now}
Announced endpoint: none
Rate limit: 2
2 slots available now.
Currently running queries (pid, space limit, time limit, start time):
"""


class _OverpassStubHandler(BaseHTTPRequestHandler):
    def __init__(self, *args, stub: OverpassStub, **kwargs):
        self.stub = stub
        super().__init__(*args, **kwargs)

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        if self.path.split("?")[0] != "/api/status":
            return self._send(404, b"", "text/plain")
        if not _answer_fault(self, self.stub.faults):
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._send(200, OVERPASS_STATUS.format(now=now).encode(), "text/plain")

    def do_POST(self):
        if self.path.split("?")[0] != "/api/interpreter":
            return self._send(404, b"", "text/plain")
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        query = form.get("data", [""])[0]
        with self.stub.faults.lock:
            self.stub.queries.append((time.monotonic(), query))
        if _answer_fault(self, self.stub.faults):
            return
        self._send(200, json.dumps(self.stub.answer(query)).encode(), "application/json")

    def log_message(self, *args):
        pass


class OverpassStub:
    """Overpass API's two endpoints as osmnx uses them: ``/api/status`` (free slots, in Overpass's words) and
    ``/api/interpreter`` (a form-encoded query, answered with the elements ``answer(query)`` gives, in Overpass's
    JSON). No Overpass runs offline; the client under test is osmnx over real HTTP. Every query is recorded
    with its arrival time; ``faults`` plans failures per path."""

    def __init__(self, answer):
        self.answer = answer
        self.faults = Faults()
        self.queries: list[tuple[float, str]] = []

    @staticmethod
    def reply(elements: list[dict]) -> dict:
        """Elements in the envelope an Overpass API answers with."""
        return {
            "version": 0.6,
            "generator": "Overpass API 0.7.62.1 084b4234",
            "osm3s": {
                "timestamp_osm_base": "2024-06-01T00:00:00Z",
                "copyright": "The data included in this document is from www.openstreetmap.org. The data is made "
                "available under ODbL.",
            },
            "elements": elements,
        }

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Yields the API's base URL (…/api)."""
        with _serve(partial(_OverpassStubHandler, stub=self)) as url:
            yield url + "/api"


TOKEN_PATH = "/api/sas/v1/token/"  # Planetary Computer's SAS token endpoint: …/{account}/{container}


class _BlobStorageHandler(_FileHandler):
    """Azure Blob Storage as Planetary Computer's assets meet a client: files under the root, by the path of the
    absolute URL a client sends its HTTP proxy (so hrefs keep their ``*.blob.core.windows.net`` host), refused with
    403 unless the query carries the SAS signature (``sig``) the token endpoint hands out."""

    def __init__(self, *args, storage: BlobStorage, **kwargs):
        self.storage = storage
        super().__init__(*args, **kwargs)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        parts = urllib.parse.urlsplit(self.path)
        signed = urllib.parse.parse_qs(parts.query).get("sig") == [self.storage.signature]
        if not parts.path.startswith(TOKEN_PATH):
            with self.storage.lock:
                self.storage.requests.append((parts.path, signed))
        self.path, self.signed = parts.path, signed  # the file's path: a query is no part of a file name
        return True

    def _refuse(self) -> None:
        body = b"<Error><Code>AuthenticationFailed</Code></Error>"
        self.send_response(403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith(TOKEN_PATH):
            return self._token()
        return super().do_GET() if self.signed else self._refuse()

    def do_HEAD(self):
        return super().do_HEAD() if self.signed else self._refuse()

    def _token(self) -> None:
        """A mock of Planetary Computer's SAS token endpoint (``/api/sas/v1/token/{account}/{container}``)."""
        with self.storage.lock:
            self.storage.token_requests.append(self.path)
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        token = f"st=2024-01-01T00%3A00%3A00Z&se={expiry}&sp=rl&sv=2021-06-08&sr=c&sig={self.storage.signature}"
        body = json.dumps({"msft:expiry": expiry, "token": token}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class BlobStorage:
    """Files under ``root`` served as signed blobs, with a mock of Planetary Computer's token endpoint, on one
    loopback server: ``proxy`` is what GDAL_HTTP_PROXY (and HTTP_PROXY) take, ``token_url`` what PC_SDK_SAS_URL
    takes. ``requests`` lists (path, signed) of the blob requests, ``token_requests`` the token requests."""

    def __init__(self, root: Path, signature: str):
        self.root, self.signature = root, signature
        self.requests: list[tuple[str, bool]] = []
        self.token_requests: list[str] = []
        self.lock = threading.Lock()

    @contextmanager
    def serve(self) -> Iterator[BlobStorage]:
        handler = partial(_BlobStorageHandler, directory=str(self.root), faults=Faults(), storage=self)
        with _serve(handler) as url:
            self.proxy = url.removeprefix("http://")
            self.token_url = url + TOKEN_PATH.rstrip("/")
            yield self
