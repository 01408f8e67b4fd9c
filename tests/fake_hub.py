"""A stand-in for the Hugging Face Hub: a local HTTP server with the two routes huggingface_hub downloads through.

`GET /api/models/<repo>` (model_info) and `HEAD`/`GET /<repo>/resolve/<revision>/<path>` (hf_hub_download), for
the repositories it is given as folders; it records every request, so tests can say what was downloaded.
"""

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from huggingface_hub import constants

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos  # repo id -> the folder it serves
        self.requests: list[tuple[str, str]] = []  # (method, path), in order

    def downloaded(self) -> list[str]:
        """The paths of the files whose content was served (GET /org/name/resolve/revision/path), in order."""
        return [path.split("/", 5)[5] for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def files(self, repo: str) -> dict[str, bytes]:
        folder = self.repos[repo]
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            if path.startswith("/api/models/"):
                repo = "/".join(path.removeprefix("/api/models/").split("/")[:2])
                if repo not in hub.repos:
                    return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
                siblings = [{"rfilename": name, "size": len(data)} for name, data in hub.files(repo).items()]
                info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
            parts = path.strip("/").split("/", 4)  # org, name, "resolve", revision, file
            repo, file = "/".join(parts[:2]), parts[4] if len(parts) == 5 else ""
            data = hub.files(repo).get(file) if repo in hub.repos else None
            if len(parts) != 5 or parts[2] != "resolve" or data is None:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, body)
            etag = hashlib.sha256(data).hexdigest()
            self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}, body)

        def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler


@contextmanager
def serving(hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """Point huggingface_hub at `hub` and at an empty `cache`, as HF_ENDPOINT and HF_HUB_CACHE would at start-up."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
