"""What each browser session's Review tab shows of each photo: where its review started (the analysis or a saved
version) and the newest saved version the session has been shown, so that the workbench opens what the table
shows and Save never silently buries a version the session did not see (another reviewer's save, an import).

Only sessions are tracked (``request.session_hash``); a call without one (a plain function call) is not checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from skinapp.cache import LRUCache
from skinapp.review import ReviewStore
from skinapp.wording import counted

#: (session, photo) pairs remembered (LRU).
MAX_SESSIONS = 4096


@dataclass(frozen=True)
class OnScreen:
    """What one session shows of one photo.

    Attributes:
        source: where the review on screen started: "analysis" or "revision N" (as ``Draft.source``).
        latest: the photo's newest saved revision the session has been shown or told about (0: none saved).
    """

    source: str
    latest: int


def _session(request: Any) -> str | None:
    return getattr(request, "session_hash", None)


class ScreenState:
    """Per (session, photo): :class:`OnScreen`. Thread-safe (an LRU cache); ``store`` gives the newest revision."""

    def __init__(self, store: ReviewStore, size: int = MAX_SESSIONS) -> None:
        self.store = store
        self._shown: LRUCache[OnScreen] = LRUCache(size)

    def _latest(self, key: str) -> int:
        review = self.store.load(key)
        return review.revision if review is not None else 0

    def shown(self, request: Any, key: str, source: str, latest: int | None = None) -> None:
        """The session now shows the photo's review from ``source``; it has seen the store's newest revision (or
        ``latest``)."""
        session = _session(request)
        if session is not None:
            self._shown.put((session, key), OnScreen(source, self._latest(key) if latest is None else latest))

    def get(self, request: Any, key: str) -> OnScreen | None:
        session = _session(request)
        return None if session is None else self._shown.get((session, key))

    def check_save(self, request: Any, key: str) -> None:
        """Refuse (once) a Save over a newer version than the session was shown; the refusal counts as showing it,
        so pressing Save again saves.

        Raises:
            ValueError: a version newer than the one the session saw, with who saved it and when, and what to do.
        """
        seen = self.get(request, key)
        if seen is None:
            return
        newest = self.store.load(key)
        if newest is None or newest.revision <= seen.latest:
            return
        self.shown(request, key, seen.source, newest.revision)
        who = f"reviewer '{newest.reviewer}'" if newest.reviewer else "no reviewer name"
        imported = " (imported)" if newest.concepts and all(c.provenance == "imported" for c in newest.concepts) else ""
        raise ValueError(f"Photo {key[:12]} has a newer saved version than the one on screen: version "
                         f"{newest.revision}{imported}, {who}, {counted(len(newest.concepts), 'concept')}, saved "
                         f"{time.strftime('%H:%M:%S', time.localtime(newest.updated_at))}. Nothing was saved. Reopen "
                         "it (Saved reviews, Reopen) to review it, or press Save again to save what is on screen as "
                         "a new version anyway.")

    def saved(self, request: Any, key: str, revision: int) -> None:
        """The session saved ``revision``: the newest it has seen."""
        seen = self.get(request, key)
        self.shown(request, key, seen.source if seen is not None else "analysis", revision)
