"""The workbench's named API endpoints through the launched app (``python app.py --profile tiny``) and
gradio_client: refine / add / delete / undo / save a version / list versions / agreement, masks as RLE."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from skinapp.review.export import rle_decode
from skinapp.synthetic import make_skin_photo
from skinapp.ui.server import AppProcess

KEY_OUTPUT = 6  # the photo key among /analyze's outputs


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wb")
    with AppProcess(workdir / "data", profile="tiny", extra_args=["--no-warmup", "--temp-dir",
                                                                   str(workdir / "tmp")]) as proc:
        yield proc, workdir


def test_workbench_endpoints_from_gradio_client(app):
    proc, workdir = app
    photo = make_skin_photo(seed=2, size=(256, 320), lesion_colour="dark_brown")
    path = workdir / "p.png"
    Image.fromarray(photo.pixels).save(path)
    client = Client(proc.url, verbose=False)
    names = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/refine", "/add_concept", "/delete_concept", "/undo_edit", "/save_version", "/versions",
            "/agreement"} <= set(names)
    key = client.predict(handle_file(str(path)), "lesion . arm", 0.3, 0.25, api_name="/analyze")[KEY_OUTPUT]

    x0, y0, x1, y1 = photo.lesion_box
    added = client.predict(key, 2 * x0 - x1, 2 * y0 - y1, 2 * x1 - x0, 2 * y1 - y0, "nodule", api_name="/add_concept")
    new = added["concepts"][-1]
    assert new["phrase"] == "nodule" and new["provenance"] == "added" and added["photo_key"] == key
    ys, xs = np.nonzero(photo.lesion_mask)
    refined = client.predict(key, new["index"], float(xs.mean()), float(ys.mean()), True, api_name="/refine")
    after = next(c for c in refined["concepts"] if c["index"] == new["index"])
    mask_before, mask_after = rle_decode(new["mask"]), rle_decode(after["mask"])
    assert after["clicks"] == [[float(xs.mean()), float(ys.mean()), 1]] and not np.array_equal(mask_before, mask_after)
    assert mask_after.shape == photo.lesion_mask.shape

    n = len(refined["concepts"])
    assert len(client.predict(key, 0, api_name="/delete_concept")["concepts"]) == n - 1
    assert len(client.predict(key, api_name="/undo_edit")["concepts"]) == n
    other = Client(proc.url, verbose=False)  # another session: its own draft, without the added concept
    with pytest.raises(AppError, match=f"no concept #{new['index']}"):
        other.predict(key, new["index"], 5.0, 5.0, True, api_name="/refine")

    saved = client.predict(key, "dr api", "", api_name="/save_version")
    assert saved["revision"] == 1 and saved["provenance"][str(new["index"])] == "added"
    versions = client.predict(key, True, api_name="/versions")
    [v1] = versions
    stored = next(c for c in v1["concepts"] if c["index"] == new["index"])
    assert v1["reviewer"] == "dr api" and np.array_equal(rle_decode(stored["mask"]), mask_after)
    other.predict(key, "dr other", "", api_name="/save_version")
    report = client.predict(api_name="/agreement")
    assert report["pairs"][0]["reviewer_a"] == "dr api" and report["pairs"][0]["reviewer_b"] == "dr other"
    with pytest.raises(AppError, match="photo key"):
        client.predict("not-a-key", 0, 1.0, 1.0, True, api_name="/refine")
    with pytest.raises(AppError, match="outside"):
        client.predict(key, 0, 9999.0, 1.0, True, api_name="/refine")
