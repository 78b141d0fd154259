"""A mock of the Hugging Face Hub's HTTP API on loopback, for the real huggingface_hub client: no Hub can be
reached offline. It answers what an upload of a dataset folder asks (create the repo, validate the card's YAML,
preupload, commit, repo info, branches), keeps the committed files, and records every request.

Files are answered as regular git blobs (no LFS or Xet storage here) with the oid of what the repo holds, as the
Hub does, so the client can tell which files it need not send again. ``refuse_commits_after`` makes the server
refuse commits after that many (an upload interrupted part way).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class MockHub:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    repos: dict[str, dict] = field(default_factory=dict)  # repo id → {"private": bool}
    files: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)  # (repo, branch) → path → bytes
    commits: list[dict] = field(default_factory=list)  # {"repo", "revision", "summary", "paths"}
    refuse_commits_after: int | None = None

    def sent(self, path: str) -> list[Request]:
        """Requests whose path contains ``path``."""
        return [r for r in self.requests if path in r.path]

    def committed_paths(self) -> list[str]:
        return [p for commit in self.commits for p in commit["paths"]]


REPO = r"(?P<repo>[^/]+/[^/]+)"


class _Handler(BaseHTTPRequestHandler):
    hub: MockHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> Request:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self.hub.requests.append(request)
        return request

    def do_GET(self) -> None:
        self._record()
        path = unquote(urlsplit(self.path).path)
        if match := re.fullmatch(rf"/api/datasets/{REPO}(?:/revision/(?P<rev>.+))?", path):
            repo, revision = match["repo"], match["rev"] or "main"
            if repo not in self.hub.repos:
                return self._reply(404, {"error": "Repository not found"})
            heads = [c for c in self.hub.commits if c["repo"] == repo and c["revision"] == revision]
            files = self.hub.files.get((repo, revision), {})
            return self._reply(200, {"id": repo, "sha": heads[-1]["oid"] if heads else "0" * 40,
                                     "private": self.hub.repos[repo]["private"],
                                     "siblings": [{"rfilename": name} for name in sorted(files)]})  # fmt: skip
        self._reply(404, {"error": f"not mocked: GET {path}"})

    def do_POST(self) -> None:
        request = self._record()
        path = unquote(urlsplit(self.path).path)
        hub = self.hub
        if path == "/api/repos/create":
            body = json.loads(request.body)
            repo = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            if repo in hub.repos:
                return self._reply(
                    409, {"error": "You already created this dataset repo", "url": f"{hub.url}/datasets/{repo}"}
                )
            private = body.get("visibility") == "private" or bool(body.get("private"))  # the client's 2.x and 0.x
            hub.repos[repo] = {"private": private, "type": body.get("type")}
            return self._reply(200, {"url": f"{hub.url}/datasets/{repo}", "name": repo, "id": repo})
        if path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if match := re.fullmatch(rf"/api/datasets/{REPO}/branch/(?P<branch>.+)", path):
            hub.files.setdefault((match["repo"], match["branch"]), dict(hub.files.get((match["repo"], "main"), {})))
            return self._reply(200, {})
        if match := re.fullmatch(rf"/api/datasets/{REPO}/preupload/(?P<rev>.+)", path):
            held = hub.files.get((match["repo"], match["rev"]), {})
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                      "oid": git_oid(held[f["path"]]) if f["path"] in held else None}
                     for f in json.loads(request.body)["files"]]  # fmt: skip
            return self._reply(200, {"files": files, "commitOid": None})
        if match := re.fullmatch(rf"/api/datasets/{REPO}/commit/(?P<rev>.+)", path):
            if hub.refuse_commits_after is not None and len(hub.commits) >= hub.refuse_commits_after:
                return self._reply(403, {"error": "commits refused (the mock's interruption)"})
            lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            added = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                     for line in lines if line["key"] == "file"}  # fmt: skip
            repo, revision = match["repo"], match["rev"]
            hub.files.setdefault((repo, revision), {}).update(added)
            oid = hashlib.sha1(request.body).hexdigest()
            hub.commits.append({"repo": repo, "revision": revision, "summary": header["summary"],
                                "paths": sorted(added), "oid": oid})  # fmt: skip
            return self._reply(200, {"commitUrl": f"{hub.url}/datasets/{repo}/commit/{oid}", "commitOid": oid,
                                     "pullRequestUrl": None})  # fmt: skip
        self._reply(404, {"error": f"not mocked: POST {path}"})


@contextmanager
def mock_hub():
    """A running :class:`MockHub` on a free loopback port; ``.url`` is its endpoint."""
    hub = MockHub()
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
