"""What the app keeps on disk, and who may fetch it.

* :class:`TempSweeper`: the app's own temporary folder (Gradio's uploads and every output image it
  writes, and review exports) is emptied at start-up and shutdown, and every file in it is deleted once it
  is older than the retention. Nothing derived from a photo outlives the retention (saved reviews live in
  the review data directory, which the user chose to keep). Before emptying it, the app claims the folder
  (:meth:`TempSweeper.claim`): a lock file held for the process's life (``filelock``), so a second app on
  the same folder is refused instead of deleting the first one's files; a folder holding files the app did
  not put there, or overlapping the review data directory, is refused too.
* :class:`ExportGuard`: a pure ASGI middleware. Every browser gets a random session cookie; an export
  (review archive or agreement CSV) is written under a random name and recorded with the cookie of the
  session that asked for it. A request for an export file
  (``/gradio_api/file=.../skinapp-export-<token>.zip`` or ``.csv``) with another or no cookie gets 403.
  Clients without cookies (``gradio_client``) get exports that only the URL opens: a 128-bit random
  token no other session is told.
* :func:`loggable`: a refusal's message as it goes to the log, with what the user typed (a phrase, a name, a
  file name) cut out: the message on the screen repeats it, the log does not.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

#: The cookie that names a browser session (HttpOnly, SameSite=Strict, no expiry: gone with the browser).
SESSION_COOKIE = "skinapp_session"
#: Exports are named so (``suffix`` one of :data:`EXPORT_SUFFIXES`); the token is the only part another session
#: would have to guess.
EXPORT_NAME = "skinapp-export-{token}.{suffix}"
#: Kinds of export: review archives (zip) and agreement tables (csv).
EXPORT_SUFFIXES = ("zip", "csv")
#: The lock file that marks a folder as an app temporary folder; a running app holds its lock.
TEMP_MARKER = ".skinapp-temp.lock"
#: What the app itself creates in its temporary folder (a folder holding only these may be emptied).
TEMP_LAYOUT = frozenset({TEMP_MARKER, "gradio", "exports"})
#: A quoted span as Python's repr writes it (either quote, backslash escapes), not inside a word (an apostrophe in
#: "the app's memory" opens nothing): every refusal that repeats user input quotes it (``{value!r}``).
_QUOTED_RE = re.compile(r"(?<!\w)(?:'(?:[^'\\\n]|\\.)*'" r'|"(?:[^"\\\n]|\\.)*")(?!\w)')
_EXPORT_RE = re.compile(r"skinapp-export-([0-9a-f]{32})\.(?:" + "|".join(EXPORT_SUFFIXES) + ")")


class TempFolderError(RuntimeError):
    """The temporary folder cannot be claimed: another app holds it, it holds files the app did not create,
    or it overlaps the review data directory."""


class TempSweeper:
    """Delete every file under ``root`` older than ``retention`` seconds, every ``interval`` seconds.

    Args:
        root: a folder the app owns alone (it is emptied at :meth:`start` and :meth:`stop`).
        retention: seconds a file may live (by its last change time).
        interval: seconds between sweeps (default: a quarter of the retention, at least 0.5 s).
    """

    def __init__(self, root: str | Path, retention: float, interval: float | None = None) -> None:
        if retention <= 0:
            raise ValueError(f"retention must be positive; got {retention}")
        self.root = Path(root)
        self.retention = float(retention)
        self.interval = float(interval) if interval else max(0.5, self.retention / 4)
        self.keep: set[Path] = set()  # the app's own assets (example photos Gradio copied in at build time)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock: FileLock | None = None

    @property
    def marker(self) -> Path:
        return self.root / TEMP_MARKER

    def claim(self, protect: Iterable[str | Path] = ()) -> TempSweeper:
        """Take the folder for this process (its lock file, held until :meth:`stop`), then empty it.

        Args:
            protect: folders that must survive (the review data directory): refused when one contains the
                root, is it, or lies inside it.

        Raises:
            TempFolderError: another process holds the folder; it holds files the app did not create (no lock
                file, and entries other than :data:`TEMP_LAYOUT`); or it overlaps a ``protect`` folder.
                Nothing is deleted then.
        """
        root = self.root.resolve()
        for kept in protect:
            kept = Path(kept).resolve()
            if kept == root or root in kept.parents or kept in root.parents:
                raise TempFolderError(f"The temporary folder {root} overlaps the data directory {kept}; the "
                                      "temporary folder is emptied at start-up: choose separate folders "
                                      "(--temp-dir, --data-dir).")
        if root.is_dir() and not self.marker.exists() and any(c.name not in TEMP_LAYOUT for c in root.iterdir()):
            raise TempFolderError(f"The temporary folder {root} holds files skinapp did not create, and it is "
                                  "emptied at start-up: choose an empty or new folder (--temp-dir).")
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.marker, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise TempFolderError(f"Another skinapp process is using the temporary folder {root} (is the app "
                                  "already running on this port?): stop it, or choose another --port or "
                                  "--temp-dir.") from None
        self._lock = lock
        self.wipe()
        return self

    def keep_current(self) -> None:
        """Exempt every file now under the root (call right after building the app, before any upload)."""
        self.keep = {p for p in self.root.rglob("*") if p.is_file()}

    def sweep(self, now: float | None = None) -> int:
        """Delete files older than the retention and empty folders; returns how many files went."""
        now = time.time() if now is None else now
        removed = 0
        if not self.root.is_dir():
            return 0
        for path in sorted(self.root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            try:
                if path in self.keep or path == self.marker:
                    continue
                if path.is_file() or path.is_symlink():
                    st = path.lstat()
                    if now - max(st.st_mtime, st.st_ctime) >= self.retention:
                        path.unlink()
                        removed += 1
                elif path.is_dir() and path != self.root and not any(path.iterdir()):
                    path.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("Could not delete a temporary file (%s)", type(exc).__name__)
        return removed

    def wipe(self) -> None:
        """Delete everything under the root but its lock file (start-up, after :meth:`claim`, and shutdown)."""
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child == self.marker:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def start(self) -> TempSweeper:
        """Start sweeping every ``interval`` seconds (call :meth:`claim` first, before the app is built)."""
        self._thread = threading.Thread(target=self._run, name="skinapp-temp-sweeper", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            removed = self.sweep()
            if removed:
                log.info("Deleted %d temporary files older than %.0f s", removed, self.retention)

    def stop(self) -> None:
        """Stop sweeping, empty the folder and release it (shutdown)."""
        self._stop.set()
        self.wipe()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class ExportGuard:
    """ASGI middleware: session cookies for browsers, exports only for the session that asked for them.

    Args:
        app: the ASGI app (Gradio's FastAPI app).
        registry: {export token: owner cookie or None}, shared with the export handler.
    """

    def __init__(self, app: Any, registry: dict[str, str | None]) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        cookie = session_cookie(_header(scope, b"cookie"))
        found = _EXPORT_RE.search(scope.get("path", ""))
        if found and "/file=" in scope.get("path", ""):
            owner = self.registry.get(found.group(1), "")
            if owner == "" or (owner is not None and owner != cookie):
                await _forbidden(send)
                return
            if not Path(scope["path"].split("/file=", 1)[1]).is_file():  # swept after the retention
                await _gone(send)
                return
        if cookie:
            await self.app(scope, receive, send)
            return
        fresh = secrets.token_hex(16)

        async def send_with_cookie(message: dict) -> None:
            if message.get("type") == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", f"{SESSION_COOKIE}={fresh}; Path=/; HttpOnly; SameSite=Strict"
                                .encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def session_cookie(header: str | None) -> str | None:
    """The session cookie's value in a Cookie header, or None."""
    if not header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header is treated as no cookie
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None and re.fullmatch(r"[0-9a-f]{32}", morsel.value) else None


def new_export_path(export_root: str | Path, registry: dict[str, str | None], owner: str | None,
                    suffix: str = "zip") -> Path:
    """A fresh export path ``<export_root>/<token>/skinapp-export-<token>.<suffix>``, recorded for ``owner``."""
    if suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"exports are one of {EXPORT_SUFFIXES}; got {suffix!r}")
    token = secrets.token_hex(16)
    registry[token] = owner
    folder = Path(export_root) / token
    folder.mkdir(parents=True, exist_ok=True)
    return folder / EXPORT_NAME.format(token=token, suffix=suffix)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _forbidden(send: Any) -> None:
    await _json_error(send, 403, b'{"detail": "This export belongs to another session."}')


async def _gone(send: Any) -> None:
    await _json_error(send, 410, b'{"detail": "This export has expired: downloads are deleted after the retention '
                                 b'time. Export again."}')


async def _json_error(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def loggable(message: str) -> str:
    """``message`` for the log: every quoted span (what the user typed, a file's name: refusals quote what they
    repeat) replaced by ``'…'``. Typed phrases can carry clinical details and file names patients' names; the
    session that typed them sees them on screen, the log keeps only the shape of the refusal.
    """
    return _QUOTED_RE.sub("'…'", message)
