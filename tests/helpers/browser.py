"""What the studio's browser tests share: starting `python handler.py --studio`, and driving the page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.helpers import ROOT, free_port

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts")) / "studio"


@contextmanager
def studio_server(*args: str, log_path: Path, ready=None, **env: str):
    """``python handler.py --studio ARGS`` on a free loopback port; yields its URL once the page answers.
    ``ready``: a context manager entered while the studio starts (its start overlaps, both import torch)."""
    port = free_port()
    environment = dict(os.environ, BASE_MODEL="tiny", REFINER_MODEL="tiny", **env)
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "handler.py", "--studio", "--port", str(port), *args], cwd=ROOT,
                                  env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with ready if ready is not None else _nothing() as alongside:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(url + "/", timeout=2)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the studio did not start: {log_path.read_text()[-3000:]}") from None
                    time.sleep(0.3)
            yield url, alongside
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def _nothing():
    yield None


@contextmanager
def served(app):
    """``app`` on uvicorn in a thread of this process, on a free loopback port; yields its URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    give_up = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < give_up and thread.is_alive(), "the studio did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def studio_headers(url: str, **more: str) -> dict:
    """What the studio's own page sends with each API call: its origin and the key from its page."""
    import re

    page = urllib.request.urlopen(url + "/", timeout=10).read().decode()
    key = re.search(r'<meta name="studio-key" content="([^"]+)">', page).group(1)
    return {"Origin": url, "X-Studio-Key": key, **more}


# Records what the page shows as it changes: every preview frame (its src), when the first came
# after Generate, and how many frames had come when the result's image appeared.
WATCH = """
const seen = window.seen = {frames: [], firstMs: null, framesBeforeResult: null, clickedAt: null};
document.getElementById('generate').addEventListener('click', () => { seen.clickedAt = performance.now(); });
new MutationObserver(() => {
  const src = document.getElementById('preview').getAttribute('src');
  if (src && src !== seen.frames[seen.frames.length - 1]) {
    if (!seen.frames.length && seen.clickedAt !== null) seen.firstMs = performance.now() - seen.clickedAt;
    seen.frames.push(src);
  }
}).observe(document.getElementById('preview'), {attributes: true, attributeFilter: ['src']});
new MutationObserver(() => {
  if (document.querySelector('#results img') && seen.framesBeforeResult === null)
    seen.framesBeforeResult = seen.frames.length;
}).observe(document.getElementById('results'), {childList: true, subtree: true});
"""


def click(page, element) -> None:
    """Scroll ``element`` to the middle of the window, as a user scrolls to what they want, then
    click it: the sticky action bar covers whatever sits at the window's bottom edge."""
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def fill(page, name: str, value: str) -> None:
    field = page.find_element(By.ID, f"in-{name}")
    field.clear()
    field.send_keys(value)


def generate(page, refine: str | None = None, **fields: str) -> None:
    """Type ``fields`` into the form (``refine`` picked from its list), then click Generate."""
    for name, value in fields.items():
        fill(page, name, value)
    if refine:
        Select(page.find_element(By.ID, "in-refine")).select_by_value(refine)
    page.find_element(By.ID, "generate").click()


def wait(page, condition: str, seconds: float = 60):
    return WebDriverWait(page, seconds, poll_frequency=0.05).until(lambda b: b.execute_script(f"return {condition}"))
