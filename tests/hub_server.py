"""A stand-in for the Hugging Face Hub (and any plain file host) on 127.0.0.1, for ``HF_ENDPOINT``.

Serves what ``huggingface_hub.hf_hub_download`` (2.x) asks for and nothing more:
``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` answering with ``X-Repo-Commit`` (the commit: the
requested revision when it is a commit hash, else :data:`COMMIT`), ``ETag`` (the file's SHA-256, as the Hub
does for LFS files), ``Content-Length`` and ``Accept-Ranges``; a ``Range: bytes=N-`` GET gets ``206`` with
``Content-Range``. Plain files (any other path) are served the same way, for our own URL downloader.

Knobs: ``drop_after[path] = n`` closes the connection after n body bytes (once), ``delay_s`` slows every
body write (so two clients overlap), ``requests`` records (method, path, Range, status).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class HubState:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # url path -> bytes; hub files under /{repo}/resolve/{rev}/{file}
        self.requests: list[tuple[str, str, str | None, int]] = []
        self.drop_after: dict[str, int] = {}
        self.delay_s = 0.0
        self.lock = threading.Lock()

    def add_hub_file(self, repo_id: str, revision: str, filename: str, data: bytes) -> None:
        self.files[f"/{repo_id}/resolve/{revision}/{filename}"] = data

    def gets(self, path: str) -> list[str | None]:
        """The Range header of every GET of ``path`` (None: from byte 0)."""
        return [rng for method, p, rng, _ in self.requests if method == "GET" and p == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, head: bool) -> None:
        state: HubState = self.server.state  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        data = state.files.get(path)
        requested = self.headers.get("Range")
        if data is None:
            with state.lock:
                state.requests.append((self.command, path, requested, 404))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        status, body, content_range = 200, data, None
        if requested and not head:
            start = int(re.fullmatch(r"bytes=(\d+)-\d*", requested).group(1))
            status, body, content_range = 206, data[start:], f"bytes {start}-{len(data) - 1}/{len(data)}"
        with state.lock:
            state.requests.append((self.command, path, requested, status))
        self.send_response(status)
        match = _RESOLVE.match(path)
        if match:
            rev = match.group("rev")
            self.send_header("X-Repo-Commit", rev if re.fullmatch(r"[0-9a-f]{40}", rev) else COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        if head:
            return
        drop = state.drop_after.pop(path, None)
        limit = len(body) if drop is None else drop
        for i in range(0, limit, 65536):
            self.wfile.write(body[i:min(i + 65536, limit)])
            self.wfile.flush()
            if state.delay_s:
                time.sleep(state.delay_s)
        if drop is not None:
            self.close_connection = True

    def do_HEAD(self) -> None:  # noqa: N802 (http.server API)
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._answer(head=False)

    def log_message(self, *args) -> None:
        pass


class HubServer:
    """``with HubServer() as (state, endpoint): ...``: a server thread on a free port of 127.0.0.1."""

    def __init__(self, port: int = 0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.daemon_threads = True
        self.state = HubState()
        self.httpd.state = self.state
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> tuple[HubState, str]:
        self.thread.start()
        return self.state, self.endpoint

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
