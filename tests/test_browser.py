"""End to end in real headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by selenium).

Uploads a photo, waits for the concept masks, the diagnosis, the CAM plot and the phrase heatmaps,
checks the untrained banner, saves a review, and writes a screenshot sheet (the Analyse page above the
Explain page). ``SKINAPP_SCREENSHOT=docs/screenshot.png`` refreshes the README's picture.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from skinapp.examples import example_paths
from skinapp.image import load_image
from skinapp.provenance import UNTRAINED_WARNING
from skinapp.ui.server import AppProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromedriver are not installed (apt-get install chromium "
                                       "chromium-driver)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

#: Where the screenshot sheet goes: the test's tmp dir, or (to refresh the README's picture)
#: SKINAPP_SCREENSHOT=docs/screenshot.png. A plain test run never rewrites a tracked file.
SCREENSHOT_ENV = "SKINAPP_SCREENSHOT"
WIDTH = 1400


@pytest.fixture
def browser(tmp_path):
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}",
                 f"--window-size={WIDTH},1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, seconds: float = 90) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.3)


def _images_in(driver, elem_id: str) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img"))


def _full_page_screenshot(driver, path: Path) -> None:
    height = driver.execute_script("return Math.max(document.body.scrollHeight, "
                                   "document.documentElement.scrollHeight)")
    driver.set_window_size(WIDTH, min(int(height) + 40, 4000))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))


def test_upload_analyse_explain_in_chromium(browser, tmp_path):
    photo = example_paths()[0]
    with AppProcess(tmp_path / "data", profile="tiny", extra_args=["--no-warmup"]) as app:
        browser.get(app.url)
        upload = _wait(browser, 60).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))
        upload.send_keys(str(photo))  # the upload event runs the analysis
        # masks, diagnosis, CAM plot, decisive concept and the banner
        _wait(browser).until(lambda d: UNTRAINED_WARNING in d.find_element(By.ID, "decisive-text").text)
        _wait(browser).until(lambda d: _images_in(d, "concepts") >= 2 and _images_in(d, "cam-plot") >= 1
                             and _images_in(d, "decisive") >= 1)
        diagnosis = browser.find_element(By.ID, "diagnosis").text
        assert any(name in diagnosis for name in ("Eczema", "Urticaria", "Psoriasis", "Insect Bite",
                                                  "Allergic Contact Dermatitis"))
        assert UNTRAINED_WARNING in browser.find_element(By.ID, "analysis-banner").text
        _full_page_screenshot(browser, tmp_path / "analyse.png")

        # Explain: three phrases, one row of four images each
        browser.set_window_size(WIDTH, 1000)
        browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Explain')]").click()
        _wait(browser, 30).until(ec.element_to_be_clickable((By.ID, "explain-btn"))).click()
        _wait(browser).until(lambda d: _images_in(d, "heatmaps") >= 12)
        captions = browser.find_element(By.ID, "heatmaps").text
        assert "MedGrad E-CLIP" in captions or "Grad E-CLIP" in captions
        _full_page_screenshot(browser, tmp_path / "explain.png")

        # Review: accept every concept and save; the status confirms the stored revision
        browser.set_window_size(WIDTH, 1000)
        browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Review')]").click()
        _wait(browser, 30).until(ec.element_to_be_clickable(
            (By.XPATH, "//button[contains(., 'Mark all pending as accepted')]"))).click()
        _wait(browser, 30).until(lambda d: "accept" in d.find_element(By.ID, "review-table").text)
        browser.find_element(By.ID, "save-review").click()
        _wait(browser, 60).until(lambda d: "revision 1" in d.find_element(By.ID, "review-status").text)

        # clicking an example photo analyses it: the details switch to the example's key
        browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Analyse')]").click()
        first_key = load_image(photo).key[:12]
        second_key = load_image(example_paths()[1]).key[:12]
        assert first_key in browser.find_element(By.ID, "analysis-details").text
        thumbs = _wait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".gallery-item, button.gallery"))
        thumbs[1].click()
        _wait(browser).until(lambda d: second_key in d.find_element(By.ID, "analysis-details").text)
    # the README screenshot: the Analyse page above the Explain page, both as the browser drew them
    analyse, explain = Image.open(tmp_path / "analyse.png"), Image.open(tmp_path / "explain.png")
    sheet = Image.new("RGB", (max(analyse.width, explain.width), analyse.height + explain.height + 8), "#9e9e9e")
    sheet.paste(analyse, (0, 0))
    sheet.paste(explain, (0, analyse.height + 8))
    target = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "screenshot.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target, optimize=True)
    assert target.stat().st_size > 20_000
