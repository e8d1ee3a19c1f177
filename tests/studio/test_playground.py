"""The studio as a newcomer's first run and as a playground, in Chromium: previews on the first
Generate with both buttons in view, the defaults shown, failures that stop the progress bar,
warnings where they are seen, code for the current form, this browser's history, the raw output
and a cost per run."""

from __future__ import annotations

import json

from selenium.webdriver.common.by import By

from tests.helpers.browser import ARTIFACTS, click, fill, generate, wait

SMALL = {"width": "256", "height": "256", "num_inference_steps": "2"}


def fresh(page):
    """The page with this browser's history and price forgotten."""
    page.execute_script("localStorage.clear()")
    page.refresh()
    wait(page, "document.body.dataset.ready === 'true'")
    return page


def in_view(page, element_id: str) -> bool:
    return page.execute_script(f"""
        const box = document.getElementById('{element_id}').getBoundingClientRect();
        return box.top >= 0 && box.left >= 0 && box.bottom <= window.innerHeight && box.right <= window.innerWidth;""")


def test_the_first_generate_shows_previews_with_both_buttons_in_view(page):
    page.set_window_size(1280, 900)
    page = fresh(page)
    assert in_view(page, "generate") and in_view(page, "cancel")
    fill(page, "prompt", "a lighthouse at dusk, oil painting")  # only the prompt: the defaults do the rest
    page.find_element(By.ID, "generate").click()
    wait(page, "!document.getElementById('preview-frame').hidden && !!document.getElementById('preview').src", 60)
    assert in_view(page, "preview") and in_view(page, "generate") and in_view(page, "cancel")
    assert page.find_element(By.ID, "cancel").is_enabled()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(ARTIFACTS / "studio-first-run-1280x900.png"))
    page.find_element(By.ID, "cancel").click()
    wait(page, "document.getElementById('progress-text').textContent === 'Cancelled.'", 30)
    assert page.execute_script("return document.getElementById('progress').hasAttribute('value')")  # not animating


def test_on_a_phone_the_buttons_stay_in_view_as_the_form_scrolls(page):
    page.set_window_size(390, 844)
    page = fresh(page)
    for scrolled in (0, 600):
        page.execute_script(f"window.scrollTo(0, {scrolled})")
        assert in_view(page, "generate") and in_view(page, "cancel"), f"scrolled {scrolled}px"


def test_the_prompt_is_marked_and_unset_defaults_are_shown(page):
    page = fresh(page)
    label = page.find_element(By.CSS_SELECTOR, "label[for='in-prompt']").text
    assert "(fill this in)" in label
    assert page.find_element(By.ID, "in-prompt").get_attribute("aria-required") == "true"
    assert page.find_element(By.ID, "in-width").get_attribute("placeholder") == "1024 (unset)"
    assert "Unset: 1024." in page.find_element(By.ID, "help-width").text
    assert page.find_element(By.ID, "in-seed").get_attribute("placeholder") == "a random one (unset)"
    assert page.find_element(By.ID, "in-preview_steps").get_attribute("value") == "2"  # previews on in the studio


def test_a_failure_stops_the_progress_bar_and_warnings_stand_out(page):
    page = fresh(page)
    generate(page, prompt="a red fox", width="1001")
    wait(page, "document.getElementById('progress-text').textContent === 'The job failed.'")
    assert page.execute_script("return document.getElementById('progress').hasAttribute('value')")
    fill(page, "width", "256")
    click(page, page.find_element(By.CSS_SELECTOR, "#more summary"))
    generate(page, height="256", num_inference_steps="2", high_noise_frac="0.5", refine="no_refiner")
    wait(page, "document.querySelector('#results img') !== null")
    warnings = page.find_element(By.ID, "warnings")
    assert warnings.is_displayed() and "high_noise_frac" in warnings.text


def test_the_code_view_follows_the_form(page):
    page = fresh(page)
    fill(page, "prompt", "a lighthouse, it's dusk")
    fill(page, "seed", "7")
    click(page, page.find_element(By.CSS_SELECTOR, "#api summary"))
    curl = page.find_element(By.ID, "api-curl-sync").text
    assert curl.startswith("curl -s -X POST http://localhost:8000/runsync")
    sent = json.loads(curl.split("-d '", 1)[1].rsplit("'", 1)[0].replace("'\\''", "'"))
    assert sent == {"input": {"prompt": "a lighthouse, it's dusk", "seed": 7, "preview_steps": 2}}
    assert "localhost:8000/run " in page.find_element(By.ID, "api-curl-run").text.replace("\n", " ")
    python = page.find_element(By.ID, "api-python").text
    assert "requests.post(\"http://localhost:8000/runsync\"" in python and '"seed": 7,' in python


def test_this_browsers_runs_are_kept_shown_and_reused(page):
    page = fresh(page)
    generate(page, prompt="first run", seed="11", **SMALL)
    wait(page, "document.querySelectorAll('#history-list li').length === 1")
    generate(page, prompt="second run", seed="22")
    wait(page, "document.querySelectorAll('#history-list li').length === 2")
    page.refresh()  # kept in the browser
    wait(page, "document.querySelectorAll('#history-list li').length === 2")
    items = page.find_elements(By.CSS_SELECTOR, "#history-list li")
    assert "second run" in items[0].text and "seed 22" in items[0].text and items[0].find_element(By.TAG_NAME, "img")
    click(page, items[1].find_element(By.CSS_SELECTOR, "button.show"))
    assert json.loads(page.find_element(By.CSS_SELECTOR, "#history-detail .run-input").text)["prompt"] == "first run"
    click(page, page.find_element(By.ID, "reuse-settings"))
    assert page.find_element(By.ID, "in-prompt").get_attribute("value") == "first run"
    assert page.find_element(By.ID, "in-seed").get_attribute("value") == "11"
    click(page, page.find_element(By.ID, "seed-random"))
    assert page.find_element(By.ID, "in-seed").get_attribute("value") == ""
    click(page, page.find_element(By.ID, "seed-last"))
    assert page.find_element(By.ID, "in-seed").get_attribute("value") == "22"
    click(page, page.find_element(By.ID, "clear-history"))
    assert page.find_elements(By.CSS_SELECTOR, "#history-list li") == []


def test_the_raw_output_and_a_cost_per_run(page):
    page = fresh(page)
    click(page, page.find_element(By.CSS_SELECTOR, "#settings summary"))
    page.find_element(By.ID, "price").send_keys("0.001")
    generate(page, prompt="a priced run", seed="5", **SMALL)
    wait(page, "document.querySelector('#results img') !== null")
    click(page, page.find_element(By.CSS_SELECTOR, "#raw summary"))
    raw = json.loads(page.find_element(By.ID, "raw-json").text)
    assert raw["seeds"] == [5] and "total" in raw["timings"] and "characters)" in raw["images"][0]
    cost = page.find_element(By.ID, "cost").text
    seconds = raw["timings"]["total"] / 1000
    assert cost.startswith(f"Cost: about ${seconds * 0.001:.5f} (") and "$0.001 per GPU-second" in cost
    page.refresh()
    wait(page, "document.body.dataset.ready === 'true'")
    assert page.find_element(By.ID, "price").get_attribute("value") == "0.001"  # kept in the browser
