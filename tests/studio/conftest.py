"""The studio as a user meets it: `python handler.py --studio` on the tiny model, in headless Chromium
(Debian's chromium and chromium-driver; .ci/run installs them)."""

from __future__ import annotations

import os

import pytest

from tests.studio.page_helpers import CHROMEDRIVER, CHROMIUM, studio_server


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    with studio_server(log_path=tmp_path_factory.mktemp("studio") / "studio.log") as (url, _):
        yield url


@pytest.fixture(scope="session")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("Chromium is not installed: apt-get install chromium chromium-driver")
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver); .ci/run installs it")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser, studio):
    """The studio page, loaded fresh, its form drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 1000)
    browser.get(studio)
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.body.dataset.ready === 'true'"))
    return browser
