"""End to end in real headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by selenium).

Issue 15 sequences in the browser: analyse photo A; upload photo B whose analysis fails (it stays in the
Photo box): A's results are gone and Explain refuses B with a message next to its button (never A's
heatmaps under B); analyse A again, explain it, score concepts and explain the top one by clicking it,
review it (numbered masks), save and reopen. Checks the untrained banner and that the diagnosis is visible
without scrolling at 1400x1000.

``SKINAPP_SCREENSHOT_DIR=docs/screenshots`` writes the Analyse / Explain / Review screenshots (1400x1000)
and ``docs/screenshot.png`` (the README's picture); a plain test run never rewrites a tracked file.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinapp.examples import example_paths
from skinapp.image import load_image
from skinapp.provenance import UNTRAINED_WARNING
from skinapp.ui.server import AppProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")]

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SCREENSHOT_ENV = "SKINAPP_SCREENSHOT_DIR"
WIDTH, HEIGHT = 1400, 1000


@pytest.fixture
def browser(tmp_path):
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chrome-profile'}",
                 f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the viewport itself is 1400x1000
                           {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, seconds: float = 90) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.3)


def _images_in(driver, elem_id: str) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img"))


def _text(driver, elem_id: str) -> str:
    """The element's text with whitespace normalised (Markdown code spans break lines in .text)."""
    return " ".join(driver.find_element(By.ID, elem_id).text.split())


def _tab(driver, name: str) -> None:
    driver.find_element(By.XPATH, f"//button[@role='tab' and contains(., '{name}')]").click()


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    folder = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    driver.save_screenshot(str(path))
    image = Image.open(path).convert("RGB")
    image.save(path, optimize=True)
    if path.stat().st_size > 500_000:  # keep docs/ light: a 256-colour palette is plenty for a screenshot
        image.quantize(256).save(path, optimize=True)
    assert image.size == (WIDTH, HEIGHT) and path.stat().st_size < 500_000


def _error_badges(driver) -> list[str]:
    """Ids of the panels showing Gradio's red "Error" status badge (a failed event marks each of its outputs)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.error')].filter(e => e.offsetParent !== null"
        " && e.innerText.trim() === 'Error').map(e => (e.closest('[id]') || {}).id || '?')")


def _upload(driver, path) -> None:
    driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(path))


#: A real smartphone photo (PAD-UFES-20, CC BY 4.0, Pacheco et al. 2020) when ../shared/data is there.
REAL_PHOTO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pad_ufes_20" / "images" / \
    "PAT_1516_1765_530.jpg"
REAL_PHOTO = REAL_PHOTO.resolve()
#: Another real photo (PAD-UFES-20): its analysis takes longer than the 0.3 s before the next upload.
SLOW_PHOTO = (REAL_PHOTO.parent / "PAT_2097_4557_241.jpg").resolve()


def test_issue15_sequences_in_chromium(browser, tmp_path):
    photo_a = REAL_PHOTO if REAL_PHOTO.is_file() else example_paths()[0]
    photo_c = example_paths()[1]
    key_a, key_c = load_image(photo_a).key[:12], load_image(photo_c).key[:12]
    tiny = tmp_path / "b_too_small.png"
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tiny)
    with AppProcess(tmp_path / "data", profile="tiny", extra_args=["--no-warmup"]) as app:
        browser.get(app.url)
        _wait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))
        _upload(browser, photo_a)  # the upload event runs the analysis
        _wait(browser).until(lambda d: f"Analysed photo {key_a}" in _text(d, "analyse-status"))
        _wait(browser).until(lambda d: _images_in(d, "concepts") >= 2 and _images_in(d, "cam-plot") >= 1
                             and _images_in(d, "decisive") >= 1)
        assert UNTRAINED_WARNING in _text(browser, "decisive-text") and key_a in _text(browser, "decisive-text")
        assert UNTRAINED_WARNING in _text(browser, "startup-banner")
        assert len(browser.find_elements(By.CSS_SELECTOR, ".untrained-banner")) == 1, "one banner, not one per panel"
        diagnosis = browser.find_element(By.ID, "diagnosis")
        assert any(n in diagnosis.text for n in ("Eczema", "Urticaria", "Psoriasis", "Insect Bite", "Allergic"))
        bottom = browser.execute_script("return arguments[0].getBoundingClientRect().bottom", diagnosis)
        assert bottom <= browser.execute_script("return window.innerHeight"), "diagnosis below the fold"
        _screenshot(browser, "after-analyse.png", tmp_path)

        # photo B fails: A's results disappear, the error stays next to the button
        _upload(browser, tiny)
        _wait(browser).until(lambda d: "too small" in _text(d, "analyse-status"))
        assert _images_in(browser, "concepts") == 0 and key_a not in _text(browser, "analysis-details")
        for panel in ("decisive-text", "diagnosis", "concepts"):  # no panel title names photo A under photo B
            assert key_a not in _text(browser, panel), panel
        # the refusal is the one message next to the button: no panel shows Gradio's red "Error" badge
        assert _error_badges(browser) == [], _error_badges(browser)
        # Explain acts on B (shown in the Photo box): refused with a message, never A's heatmaps
        _tab(browser, "Explain")
        _wait(browser, 30).until(ec.element_to_be_clickable((By.ID, "explain-btn"))).click()
        _wait(browser).until(lambda d: "too small" in _text(d, "explain-status"))
        assert _images_in(browser, "heatmaps") == 0

        # photo A again: explained, every tile captioned, the key on the gallery
        _tab(browser, "Analyse")
        _upload(browser, photo_a)
        _wait(browser).until(lambda d: f"Analysed photo {key_a}" in _text(d, "analyse-status"))
        _tab(browser, "Explain")
        _wait(browser, 30).until(ec.element_to_be_clickable((By.ID, "explain-btn"))).click()
        _wait(browser).until(lambda d: _images_in(d, "heatmaps") >= 12 and key_a in _text(d, "explain-status"))
        captions = _text(browser, "heatmaps")  # every tile: method and similarity, untruncated
        assert captions.count("MedGrad E-CLIP \u00b7 sim ") == 3 and captions.count("Grad-CAM \u00b7 sim ") == 3
        assert "ulcer with undermined edges" in captions
        _screenshot(browser, "after-explain.png", tmp_path)

        # concept scores: a chart naming the model, a picker sorted by score; picking a concept explains it
        browser.find_element(By.ID, "concept-btn").click()
        _wait(browser).until(lambda d: f"concepts for photo {key_a}" in _text(d, "concept-status"))
        assert "Scores from CLIP weights demo" in _text(browser, "concept-status")
        _wait(browser, 30).until(lambda d: _images_in(d, "concept-plot") >= 1
                                 or d.find_elements(By.CSS_SELECTOR, "#concept-plot svg, #concept-plot canvas"))
        options = _wait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#concept-pick label"))
        assert len(options) == 21 and all(" \u00b7 " in o.text for o in options)
        picked = options[0].text.split(" \u00b7 ")[0]
        options[0].click()
        _wait(browser).until(lambda d: "Explained 1 phrase for photo" in _text(d, "explain-status")
                             and _images_in(d, "heatmaps") == 4)
        assert picked in _text(browser, "heatmaps") and _text(browser, "heatmaps").count("MedGrad E-CLIP") == 1

        # Review: numbered masks on the photo, save, reopen; statuses name photo A only
        _tab(browser, "Review")
        _wait(browser, 30).until(lambda d: _images_in(d, "review-image") >= 2)
        key_box = browser.find_element(By.CSS_SELECTOR, "#review-key input, #review-key textarea")
        assert key_box.get_attribute("value").startswith(key_a)
        browser.find_element(By.XPATH, "//button[contains(., 'Mark all pending as accepted')]").click()
        _wait(browser, 30).until(lambda d: "accept" in _text(d, "review-table"))
        browser.find_element(By.ID, "save-review").click()
        _wait(browser, 60).until(lambda d: "revision 1" in _text(d, "review-status"))
        assert key_a in _text(browser, "review-status")
        browser.find_element(By.ID, "reopen").click()
        _wait(browser, 60).until(lambda d: f"Reopened review of photo {key_a}" in _text(d, "review-status"))
        _screenshot(browser, "after-review.png", tmp_path)

        # a photo uploaded while another is being analysed is analysed too (it was dropped: the first photo's
        # results stayed under it), and its results replace the first one's
        _tab(browser, "Analyse")
        photo_d = SLOW_PHOTO if SLOW_PHOTO.is_file() else example_paths()[2]  # still analysing at the 2nd upload
        _upload(browser, photo_d)
        time.sleep(0.3)
        _upload(browser, photo_a)
        _wait(browser).until(lambda d: f"Analysed photo {key_a}" in _text(d, "analyse-status"))
        assert key_a in _text(browser, "diagnosis") and key_a in _text(browser, "analysis-details")

        # clicking an example photo analyses it: every status switches to its key
        thumbs = _wait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".gallery-item, button.gallery"))
        thumbs[1].click()
        _wait(browser).until(lambda d: key_c in _text(d, "analysis-details"))
        assert key_a not in _text(browser, "analyse-status")
    if os.environ.get(SCREENSHOT_ENV):  # the README's picture
        shutil.copyfile(Path(os.environ[SCREENSHOT_ENV]) / "after-analyse.png",
                        Path(os.environ[SCREENSHOT_ENV]).parent / "screenshot.png")


def test_app_download_full_mode_page_in_chromium(browser, tmp_path, monkeypatch):
    """Issue 12: ``python app.py --download`` against a local Hub stand-in serves the full-mode page."""
    from tests.hub_server import HubServer
    from tests.test_app_download import app_env
    from tests.test_trained_path import _small_architectures
    from tests.tiny_release import serve_release, write_release

    _small_architectures(monkeypatch)
    with HubServer() as (state, endpoint):
        made = write_release(tmp_path, endpoint)
        serve_release(state, made)
        env = app_env(tmp_path, endpoint, made)
        with AppProcess(tmp_path / "data", profile="auto", extra_args=["--download", "--no-warmup"], env=env) as app:
            browser.get(app.url)
            _wait(browser, 60).until(lambda d: "Weights used:" in _text(d, "startup-banner"))
            assert UNTRAINED_WARNING not in _text(browser, "startup-banner")
            assert browser.find_elements(By.CSS_SELECTOR, ".untrained-banner") == []
            assert not [b for b in browser.find_elements(By.ID, "download-models") if b.is_displayed()]
