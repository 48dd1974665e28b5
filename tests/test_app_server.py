"""The launched app (``python app.py --profile tiny`` on 127.0.0.1, a free port) driven through gradio_client.

One server for the module. Covers issue 15 §1 (every endpoint acts on the photo it is given; results name
the photo key) and §2 (the uploaded file itself reaches skinapp.image.load_image: 16-bit PNG, RGBA
transparency, CMYK JPEG, animated GIF).
"""

from __future__ import annotations

import io
import json
import threading
import zipfile

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from skinapp.image import load_image
from skinapp.provenance import UNTRAINED_WARNING
from skinapp.synthetic import make_skin_photo
from skinapp.ui.server import AppProcess

# analyse outputs as the client sees them
(ANNOTATED, DIAGNOSIS, PLOT, DECISIVE, DECISIVE_TEXT, BANNER, KEY, TABLE, REVIEW_IMAGE, REVIEW_STATUS, DETAILS,
 STATUS) = range(12)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def app(workdir):
    with AppProcess(workdir / "data", profile="tiny",
                    extra_args=["--no-warmup", "--temp-dir", str(workdir / "tmp")]) as proc:
        yield proc


@pytest.fixture(scope="module")
def photos(workdir):
    paths = []
    for seed, colour in ((41, "dark_brown"), (42, "red")):
        path = workdir / f"photo{seed}.png"
        Image.fromarray(make_skin_photo(seed=seed, size=(192, 256), lesion_colour=colour).pixels).save(path)
        paths.append(str(path))
    return paths


def _client(app) -> Client:
    return Client(app.url, verbose=False)


def _analyse(client, path, prompts="lesion . arm"):
    return client.predict(handle_file(path), prompts, 0.3, 0.25, api_name="/analyze")


def test_binds_localhost_and_names_endpoints(app):
    api = _client(app).view_api(return_format="dict", print_info=False)
    names = api["named_endpoints"]
    assert {"/analyze", "/explain", "/save_review", "/open_review", "/list_reviews", "/export_reviews"} <= set(names)
    assert [p["parameter_name"] for p in names["/save_review"]["parameters"]] == ["photo_key", "table", "reviewer",
                                                                                  "note"]
    assert [p["parameter_name"] for p in names["/explain"]["parameters"]] == ["image", "phrases", "clip_choice"]
    assert app.url.startswith("http://127.0.0.1:")


def test_analyse_explain_review_export(app, photos):
    client = _client(app)
    out = _analyse(client, photos[0])
    key = load_image(photos[0]).key
    assert out[KEY] == key and key[:12] in out[ANNOTATED]["label"] and key[:12] in out[DIAGNOSIS]["label"]
    assert UNTRAINED_WARNING in out[BANNER] and UNTRAINED_WARNING in out[DECISIVE_TEXT]
    assert UNTRAINED_WARNING in out[DIAGNOSIS]["label"]
    n = len(out[ANNOTATED]["value"]["annotations"])
    table = out[TABLE]
    assert n >= 1 and len(table["data"]) == n

    gallery, sims, banner, status = client.predict(handle_file(photos[0]), "irregular streaks\nblue-whitish veil",
                                                   None, api_name="/explain")
    items = gallery["value"]
    assert len(items) == 8 and UNTRAINED_WARNING in banner and "MedGrad E-CLIP" in gallery["label"]
    assert key[:12] in gallery["label"] and key[:12] in status and "sim " in items[1]["caption"]
    assert [row[1] for row in sims["data"]] == ["irregular streaks", "blue-whitish veil"]

    for row in table["data"]:
        row[3] = "accept"
    status, _, saved = client.predict(out[KEY], table, "dr api", "via client", api_name="/save_review")
    assert "revision 1" in status and key[:12] in status and {r[3] for r in saved["data"]} == {"accept"}

    archive, message = client.predict(api_name="/export_reviews")
    with zipfile.ZipFile(archive) as zf:
        coco = json.loads(zf.read("annotations.json"))
    assert len(coco["annotations"]) >= n and coco["annotations"][0]["segmentation"]["counts"]


def test_explain_acts_on_the_photo_given(app, photos, workdir):
    """Issue 15 §1: in one client session analyse A, then explain B: B's heatmaps, named by B's key."""
    client = _client(app)
    key_a, key_b = (load_image(p).key for p in photos)
    assert _analyse(client, photos[0])[KEY] == key_a
    gallery_b, sims_b, _, status_b = client.predict(handle_file(photos[1]), "streaks", None, api_name="/explain")
    assert key_b[:12] in gallery_b["label"] and key_b[:12] in status_b and key_a[:12] not in status_b
    gallery_a, sims_a, _, _ = client.predict(handle_file(photos[0]), "streaks", None, api_name="/explain")
    tile_a = np.asarray(Image.open(gallery_a["value"][1]["image"]))
    tile_b = np.asarray(Image.open(gallery_b["value"][1]["image"]))
    assert np.abs(tile_a.astype(int) - tile_b.astype(int)).mean() > 1, "A's heatmap returned for B"
    assert sims_a["data"][0][2] != sims_b["data"][0][2]
    # a 1x1 PNG after a good analysis is refused, not "explained" with the earlier photo's results
    one = workdir / "one.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(one)
    with pytest.raises(AppError, match="too small"):
        client.predict(handle_file(str(one)), "streaks", None, api_name="/explain")


def test_save_and_reopen_act_on_the_photo_named(app, photos):
    """Analyse A and B; B's key with A's table is refused; reopen works from a fresh client by the short key."""
    client = _client(app)
    out_a, out_b = _analyse(client, photos[0], "lesion"), _analyse(client, photos[1], "lesion")
    table_a = out_a[TABLE]
    for row in table_a["data"]:
        row[3] = "reject"
    with pytest.raises(AppError, match="does not belong to photo"):
        client.predict(out_b[KEY], table_a, "", "", api_name="/save_review")
    status, _, _ = client.predict(out_a[KEY], table_a, "dr s", "", api_name="/save_review")
    assert out_a[KEY][:12] in status and out_b[KEY][:12] not in status
    revision = int(status.split("(revision ")[1].split(")")[0])

    fresh = _client(app)  # no /list_reviews first
    key, table, reviewer, note, preview, status = fresh.predict(out_a[KEY][:12], api_name="/open_review")
    assert key == out_a[KEY] and reviewer == "dr s" and {r[3] for r in table["data"]} == {"reject"}
    assert out_a[KEY][:12] in status and out_a[KEY][:12] in preview["label"]
    with pytest.raises(AppError, match="does not belong to photo"):  # the reopened table cannot amend photo B
        fresh.predict(out_b[KEY], table, "", "", api_name="/save_review")
    status, _, _ = fresh.predict(key, table, "dr t", "amended", api_name="/save_review")
    assert f"revision {revision + 1}" in status


def _upload_bytes(workdir, name: str, data: bytes) -> str:
    path = workdir / name
    path.write_bytes(data)
    return str(path)


def _working_pixels(out) -> np.ndarray:
    return np.asarray(Image.open(out[ANNOTATED]["value"]["image"]).convert("RGB"))


def test_uploaded_file_itself_reaches_the_loader(app, workdir):
    """Issue 15 §2: 16-bit PNG, RGBA transparency, CMYK JPEG and animated GIF through the launched app."""
    client = _client(app)
    base = make_skin_photo(seed=7, size=(160, 200)).pixels
    # 16-bit grayscale gradient 0..65535: Gradio's own conversion made it 99.6 % white
    gradient = np.tile(np.linspace(0, 65535, 200, dtype=np.uint16), (160, 1))
    buf = io.BytesIO()
    Image.fromarray(gradient).save(buf, "PNG")
    out = _analyse(client, _upload_bytes(workdir, "grad16.png", buf.getvalue()))
    pixels = _working_pixels(out)
    assert "high bit depth" in out[DETAILS] and (pixels > 250).mean() < 0.05 and 100 < pixels.mean() < 155
    # RGBA whose transparent area hides pure green: it must be analysed as white
    rgba = np.dstack([base, np.full(base.shape[:2], 255, np.uint8)])
    rgba[:40, :40, :3], rgba[:40, :40, 3] = (0, 255, 0), 0
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    out = _analyse(client, _upload_bytes(workdir, "transparent.png", buf.getvalue()))
    corner = _working_pixels(out)[:36, :36].astype(int)  # (Gradio re-encodes output images lossily: a margin)
    assert "transparent areas placed on white" in out[DETAILS] and corner.min() > 230, "hidden green analysed"
    # CMYK JPEG keeps its conversion note
    buf = io.BytesIO()
    Image.fromarray(base).convert("CMYK").save(buf, "JPEG", quality=95)
    out = _analyse(client, _upload_bytes(workdir, "cmyk.jpg", buf.getvalue()))
    assert "converted from CMYK" in out[DETAILS]
    # animated GIF: the first frame, and a note saying so
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, "GIF", save_all=True, append_images=[Image.fromarray(255 - base)], duration=50)
    out = _analyse(client, _upload_bytes(workdir, "anim.gif", buf.getvalue()))
    assert "first frame" in out[DETAILS] and "2 frames" in out[DETAILS]


def test_bad_input_gives_a_readable_error_and_app_stays_up(app, photos):
    client = _client(app)
    with pytest.raises(AppError, match="phrase"):
        client.predict(handle_file(photos[0]), "   ", None, api_name="/explain")
    with pytest.raises(AppError, match="maximum value"):  # Gradio's own slider check
        client.predict(handle_file(photos[0]), "lesion", 7.0, 0.25, api_name="/analyze")
    with pytest.raises(AppError, match="not a prompt"):
        client.predict(handle_file(photos[0]), "%% . 42", 0.3, 0.25, api_name="/analyze")
    not_image = photos[0] + ".txt"
    with open(not_image, "w") as f:
        f.write("not a photo")
    with pytest.raises(AppError, match="not an image we can read"):
        client.predict(handle_file(not_image), "lesion", 0.3, 0.25, api_name="/analyze")
    out = _analyse(client, photos[1], "lesion")
    assert UNTRAINED_WARNING in out[BANNER]


def test_two_concurrent_clients_get_their_own_results(app, photos):
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = _analyse(_client(app), photos[i], "lesion . leg")
        except BaseException as exc:  # noqa: BLE001 (re-raised in the main thread below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i in range(2):
        assert results[i][KEY] == load_image(photos[i]).key
        assert results[i][KEY][:12] in results[i][DETAILS]


def test_review_survives_kill_9_and_restart(workdir, photos):
    data, temp = workdir / "killed", ["--temp-dir", str(workdir / "killed-tmp")]  # the restart cleans it
    with AppProcess(data, profile="tiny", extra_args=["--no-warmup", *temp]) as first:
        client = _client(first)
        out = _analyse(client, photos[1], "lesion")
        table = out[TABLE]
        table["data"][0][3], table["data"][0][4] = "relabel", "nodule"
        status, _, _ = client.predict(out[KEY], table, "dr k", "", api_name="/save_review")
        assert "revision 1" in status
        first.kill()  # SIGKILL right after the save was confirmed
        assert first.proc.returncode == -9
    with AppProcess(data, profile="tiny", extra_args=["--no-warmup", *temp]) as second:
        client = _client(second)
        key = load_image(photos[1]).key
        _, table, reviewer, note, preview, status = client.predict(key, api_name="/open_review")
        assert reviewer == "dr k" and table["data"][0][3] == "relabel" and table["data"][0][4] == "nodule"
        assert "Reopened" in status
