"""The launched app (``python app.py --profile tiny`` on 127.0.0.1, a free port) driven through gradio_client."""

from __future__ import annotations

import json
import threading
import zipfile

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from skinapp.provenance import UNTRAINED_WARNING
from skinapp.synthetic import make_skin_photo
from skinapp.ui.server import AppProcess

# analyse outputs as the client sees them (gr.State is not part of the API)
ANNOTATED, DIAGNOSIS, PLOT, DECISIVE, DECISIVE_TEXT, BANNER, TABLE, STATUS, DETAILS = range(9)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def app(workdir):
    with AppProcess(workdir / "data", profile="tiny", extra_args=["--no-warmup"]) as proc:
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


def test_binds_localhost_and_names_endpoints(app):
    api = _client(app).view_api(return_format="dict", print_info=False)
    assert {"/analyze", "/explain", "/save_review", "/export_reviews"} <= set(api["named_endpoints"])
    assert app.url.startswith("http://127.0.0.1:")


def test_analyse_explain_review_export(app, photos):
    client = _client(app)
    out = client.predict(handle_file(photos[0]), "lesion . arm", 0.3, 0.25, api_name="/analyze")
    assert UNTRAINED_WARNING in out[BANNER] and UNTRAINED_WARNING in out[DECISIVE_TEXT]
    assert UNTRAINED_WARNING in out[DIAGNOSIS]["label"]
    n = len(out[ANNOTATED]["value"]["annotations"])
    table = out[TABLE]
    assert n >= 1 and len(table["data"]) == n

    gallery, sims, banner = client.predict(handle_file(photos[0]), "irregular streaks\nblue-whitish veil", None,
                                           api_name="/explain")
    items = gallery["value"]  # a gr.Gallery update: label (methods, CLIP weights) + value
    assert len(items) == 8 and UNTRAINED_WARNING in banner and "MedGrad E-CLIP" in gallery["label"]
    assert "CLIP sim" in items[1]["caption"]
    assert [row[0] for row in sims["data"]] == ["irregular streaks", "blue-whitish veil"]

    for row in table["data"]:
        row[3] = "accept"
    status, _, saved = client.predict(handle_file(photos[0]), table, "dr api", "via client", api_name="/save_review")
    assert "revision 1" in status and {r[3] for r in saved["data"]} == {"accept"}

    archive, message = client.predict(api_name="/export_reviews")
    with zipfile.ZipFile(archive) as zf:
        coco = json.loads(zf.read("annotations.json"))
    assert len(coco["annotations"]) >= n and coco["annotations"][0]["segmentation"]["counts"]


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
    with pytest.raises(AppError, match="not a readable image"):
        client.predict(handle_file(not_image), "lesion", 0.3, 0.25, api_name="/analyze")
    out = client.predict(handle_file(photos[1]), "lesion", 0.3, 0.25, api_name="/analyze")
    assert UNTRAINED_WARNING in out[BANNER]


def test_two_concurrent_clients_get_their_own_results(app, photos):
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            client = _client(app)
            out = client.predict(handle_file(photos[i]), "lesion . leg", 0.3, 0.25, api_name="/analyze")
            results[i] = out
        except BaseException as exc:  # noqa: BLE001 (re-raised in the main thread below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    # each photo's details name its own key; the keys (content hashes) differ
    keys = [results[i][DETAILS].split("`")[1] for i in range(2)]
    assert keys[0] != keys[1]
    from skinapp.image import load_image

    for i in range(2):
        assert load_image(photos[i]).key.startswith(keys[i])


def test_review_survives_kill_9_and_restart(workdir, photos):
    data = workdir / "killed"
    with AppProcess(data, profile="tiny", extra_args=["--no-warmup"]) as first:
        client = _client(first)
        out = client.predict(handle_file(photos[1]), "lesion", 0.3, 0.25, api_name="/analyze")
        table = out[TABLE]
        table["data"][0][3], table["data"][0][4] = "relabel", "nodule"
        status, _, _ = client.predict(handle_file(photos[1]), table, "dr k", "", api_name="/save_review")
        assert "revision 1" in status
        first.kill()  # SIGKILL right after the save was confirmed
        assert first.proc.returncode == -9
    with AppProcess(data, profile="tiny", extra_args=["--no-warmup"]) as second:
        client = _client(second)
        choices = client.predict(api_name="/list_reviews")
        from skinapp.image import load_image

        key = load_image(photos[1]).key
        table, reviewer, note, preview, status = client.predict(key, api_name="/open_review")
        assert reviewer == "dr k" and table["data"][0][3] == "relabel" and table["data"][0][4] == "nodule"
        assert "Reopened" in status and choices is not None
