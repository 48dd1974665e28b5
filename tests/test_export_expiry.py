"""An export link of this session that outlived the retention says so (410 Gone), not Gradio's 403 "File not
allowed"; other sessions still get 403 whether the file exists or not."""

from __future__ import annotations

import asyncio
import json

from skinapp.ui.privacy import SESSION_COOKIE, ExportGuard, new_export_path


def _get(owners: dict, path: str, cookie: str | None) -> tuple[int, dict | None]:
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


def test_an_expired_export_is_gone_for_its_session_and_forbidden_for_others(tmp_path):
    owners: dict[str, str | None] = {}
    mine, other = "a" * 32, "b" * 32
    path = new_export_path(tmp_path, owners, mine, "zip")
    path.write_bytes(b"PK")
    url = f"/gradio_api/file={path}"
    assert _get(owners, url, mine) == (200, None)
    path.unlink()  # the sweeper deleted it after the retention
    assert _get(owners, url, mine) == (410, {"detail": "This export has expired: downloads are deleted after the "
                                                       "retention time. Export again."})
    assert _get(owners, url, other)[0] == 403 and _get(owners, url, None)[0] == 403
