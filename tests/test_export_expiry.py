"""An export link of this session that outlived the retention says so (410 Gone), not Gradio's 403 "File not
allowed"; other sessions still get 403 whether the file exists or not."""

from __future__ import annotations

from skinapp.ui.privacy import new_export_path
from tests.asgi_guard import guard_get


def test_an_expired_export_is_gone_for_its_session_and_forbidden_for_others(tmp_path):
    owners: dict[str, str | None] = {}
    mine, other = "a" * 32, "b" * 32
    path = new_export_path(tmp_path, owners, mine, "zip")
    path.write_bytes(b"PK")
    url = f"/gradio_api/file={path}"
    assert guard_get(owners, url, mine) == (200, None)
    path.unlink()  # the sweeper deleted it after the retention
    assert guard_get(owners, url, mine) == (410, {"detail": "This export has expired: downloads are deleted after the "
                                                       "retention time. Export again."})
    assert guard_get(owners, url, other)[0] == 403 and guard_get(owners, url, None)[0] == 403
