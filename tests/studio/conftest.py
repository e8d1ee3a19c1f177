"""The studio as a user meets it: handler.py's studio on the tiny model, in headless Chromium
(Debian's chromium and chromium-driver; .ci/run installs them)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.browser import CHROMEDRIVER, CHROMIUM


@pytest.fixture(scope="session")
def studio_app(models):
    """handler.py's studio on this machine's worker, in this process on the suite's tiny model: the
    page, the app and the RunPod handler its jobs run through are the ones `python handler.py
    --studio` serves (the start-up itself is tested elsewhere; the endpoint tests start the command).
    Yields (its URL, the app)."""
    import handler
    from sdxl_worker.studio import app as studio_app
    from tests.helpers import worker_with
    from tests.helpers.browser import served

    kept = {}
    real_start, real_serve = handler.startup.start, studio_app.serve
    handler.startup.start = lambda: worker_with(models)
    studio_app.serve = lambda page, host, port, where: kept.update(page=page, host=host, port=port)
    try:
        assert handler.studio(["--studio"]) == 0
    finally:
        handler.startup.start, studio_app.serve = real_start, real_serve
    assert (kept["host"], kept["port"]) == ("127.0.0.1", 8080)  # the defaults the docs give
    with served(kept["page"]) as url:
        yield url, kept["page"]


@pytest.fixture(scope="session")
def studio(studio_app):
    return studio_app[0]


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
