"""The mask workbench in real headless Chromium: select a concept, click a point on the photo, see the mask
change, save (the Review tab's one Save keeps the edited mask), reopen it."""

from __future__ import annotations

import re

import pytest

from skinapp.examples import example_paths
from skinapp.image import load_image
from skinapp.ui.server import AppProcess
from tests.test_browser import CHROMEDRIVER, CHROMIUM, _tab, _text, _upload, _wait, browser  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed")]

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def _wb_src(driver) -> str:
    images = driver.find_elements(By.CSS_SELECTOR, "#wb-image img")
    return images[0].get_attribute("src") if images else ""


def _dropdown(driver, elem_id: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input").get_attribute("value") or ""


def test_click_refines_then_save_and_reopen_in_chromium(browser, tmp_path):  # noqa: F811
    photo = example_paths()[0]
    key = load_image(photo).key[:12]
    with AppProcess(tmp_path / "data", profile="tiny", extra_args=["--no-warmup"]) as app:
        browser.get(app.url)
        _wait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
        _upload(browser, photo)
        _wait(browser).until(lambda d: f"Analysed photo {key}" in _text(d, "analyse-status"))
        _tab(browser, "Review")
        _wait(browser, 60).until(lambda d: _wb_src(d) and f"photo {key}" in _text(d, "wb-status").lower())
        assert _dropdown(browser, "wb-concept").startswith("#0 ")
        before = _wb_src(browser)
        image = browser.find_element(By.CSS_SELECTOR, "#wb-image img")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
        ActionChains(browser).move_to_element_with_offset(image, 10, 8).click().perform()
        _wait(browser, 60).until(lambda d: "positive click" in _text(d, "wb-status"))
        _wait(browser, 30).until(lambda d: _wb_src(d) and _wb_src(d) != before)
        before_px, after_px = re.search(r"mask (\d+) -> (\d+) px", _text(browser, "wb-status")).groups()
        assert before_px != after_px, "the click did not change the mask"
        browser.find_element(By.ID, "wb-undo").click()
        _wait(browser, 30).until(lambda d: "Undone" in _text(d, "wb-status"))
        browser.find_element(By.ID, "wb-redo").click()
        _wait(browser, 30).until(lambda d: "Redone" in _text(d, "wb-status"))
        browser.find_element(By.ID, "save-review").click()  # the tab's one Save: the edits are kept
        _wait(browser, 60).until(lambda d: f"Saved version 1 of photo {key}" in _text(d, "review-status"))
        assert "1 edited by hand" in _text(browser, "review-status")
        _wait(browser, 30).until(lambda d: "v1" in _dropdown(d, "wb-versions"))
        browser.find_element(By.ID, "wb-open-version").click()
        _wait(browser, 60).until(lambda d: "Opened version 1" in _text(d, "wb-status"))
        assert _dropdown(browser, "wb-concept").endswith("(refined)")
