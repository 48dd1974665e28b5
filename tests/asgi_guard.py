"""Drive :class:`skinapp.ui.privacy.ExportGuard` with one GET, no server: what status and body it answers."""

from __future__ import annotations

import asyncio
import json

from skinapp.ui.privacy import SESSION_COOKIE, ExportGuard


def guard_get(owners: dict, path: str, cookie: str | None) -> tuple[int, dict | None]:
    """(status, JSON body or None) of ExportGuard on a GET of ``path`` (200: passed on to the app)."""
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    headers = [(b"cookie", f"{SESSION_COOKIE}={cookie}".encode())] if cookie else []
    asyncio.run(ExportGuard(app, owners)({"type": "http", "path": path, "headers": headers}, None, send))
    body = next((m["body"] for m in sent if m["type"] == "http.response.body"), None)
    return sent[0]["status"], json.loads(body) if body else None
