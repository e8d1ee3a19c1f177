"""The studio page in a real browser: previews forming in place, the result with its seed, an error
beside its field, Cancel, the keyboard, a phone-width screen."""

from __future__ import annotations

import time

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.helpers.browser import ARTIFACTS, WATCH, click, fill, generate, wait


def test_previews_form_in_place_then_the_image_and_its_seed(page):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.execute_script(WATCH)
    generate(page, prompt="a lighthouse at dusk, oil painting", width="512", height="512", num_inference_steps="24",
             seed="1234", preview_steps="3", refine="no_refiner")

    wait(page, "window.seen.frames.length >= 2")
    page.execute_script("window.scrollTo(0, 0)")
    page.save_screenshot(str(ARTIFACTS / "studio-mid-job.png"))
    assert "Step" in page.find_element(By.ID, "progress-text").text
    wait(page, "document.querySelector('#results img') !== null")
    page.execute_script("window.scrollTo(0, 0)")
    page.save_screenshot(str(ARTIFACTS / "studio-finished.png"))

    seen = page.execute_script("return window.seen")
    assert len(set(seen["frames"])) >= 2, "the preview did not change as the image formed"
    assert seen["framesBeforeResult"] >= 2, "the previews came after the final image"
    assert all(frame.startswith("data:image/jpeg;base64,") for frame in seen["frames"])
    caption = page.find_element(By.CSS_SELECTOR, "#results figcaption").text
    assert "Seed 1234" in caption
    link = page.find_element(By.CSS_SELECTOR, "#results a[download]")
    assert link.get_attribute("href").startswith("data:image/png;base64,") and link.get_attribute("download") == "sdxl-1234.png"
    assert page.find_element(By.ID, "generate").is_enabled() and not page.find_element(By.ID, "cancel").is_enabled()
    assert "Timings:" in page.find_element(By.ID, "timings").text
    assert not page.find_element(By.ID, "preview").is_displayed()  # the final image took its place
    print(f"\nfirst preview {seen['firstMs']:.0f} ms after Generate (512x512, tiny model, preview every 3 steps)")
    (ARTIFACTS / "first-preview-ms.txt").write_text(f"{seen['firstMs']:.0f}\n")


def test_an_error_is_shown_next_to_the_field_it_names(page):
    fill(page, "prompt", "a red fox")
    fill(page, "width", "1001")
    page.find_element(By.ID, "generate").click()
    wait(page, "!document.getElementById('err-width').hidden")
    message = page.find_element(By.ID, "err-width").text
    assert "'width'" in message and "8" in message  # the worker's sentence: a multiple of 8
    assert "invalid" in page.find_element(By.ID, "field-width").get_attribute("class")
    assert page.find_element(By.ID, "in-width").get_attribute("aria-invalid") == "true"
    assert page.switch_to.active_element.get_attribute("id") == "in-width"  # focus goes to the field to fix
    assert page.find_element(By.ID, "err-height").get_attribute("hidden") is not None  # only the field at fault
    generate(page, width="256", height="256", num_inference_steps="2")
    wait(page, "document.querySelector('#results img') !== null")
    assert page.find_element(By.ID, "err-width").get_attribute("hidden") is not None  # cleared by the next job


def test_markup_in_an_error_sentence_is_shown_as_text_never_run(page, monkeypatch):
    """The page puts a worker's (or an endpoint's) sentence in as text: markup in it stays letters."""
    import sdxl_worker.runtime.job
    from sdxl_worker.errors import InputError

    markup = '<img src=x onerror="window.pwned=1"><b>bold</b>'

    def refuse(request, plan, abilities):
        raise InputError(f"'prompt' is {markup}, which is refused here.")

    monkeypatch.setattr(sdxl_worker.runtime.job, "check", refuse)
    generate(page, prompt="a red fox", width="256", height="256", num_inference_steps="2")
    wait(page, "!document.getElementById('err-prompt').hidden")
    slot = page.find_element(By.ID, "err-prompt")
    assert markup in slot.text  # the letters, as sent
    assert not page.find_elements(By.CSS_SELECTOR, "#err-prompt img, #err-prompt b, img[src='x']")  # no element made
    assert page.execute_script("return window.pwned") is None


def test_cancel_stops_a_long_job_and_the_next_one_runs(page):
    generate(page, prompt="a long job", width="1024", height="1024", num_inference_steps="200")
    wait(page, "document.getElementById('progress-text').textContent.startsWith('Step')")
    started = time.monotonic()
    page.find_element(By.ID, "cancel").click()
    wait(page, "document.getElementById('progress-text').textContent === 'Cancelled.'", 30)
    assert time.monotonic() - started < 20
    assert page.find_element(By.ID, "generate").is_enabled()
    assert not page.find_elements(By.CSS_SELECTOR, "#results img")
    generate(page, width="256", height="256", num_inference_steps="2")
    wait(page, "document.querySelector('#results img') !== null")


def test_every_control_has_a_label_and_the_keyboard_runs_a_job(page):
    unlabelled = page.execute_script("""
        return [...document.querySelectorAll('input, select, textarea')]
          .filter((control) => !document.querySelector(`label[for="${control.id}"]`) && !control.getAttribute('aria-label'))
          .map((control) => control.id || control.outerHTML);
    """)
    assert unlabelled == []
    buttons = page.execute_script("return [...document.querySelectorAll('button')].filter(b => !b.textContent.trim()).length")
    assert buttons == 0
    prompt = page.find_element(By.ID, "in-prompt")
    prompt.send_keys("a keyboard-only job")
    # Tab moves through the fields in order, from the prompt to the negative prompt.
    prompt.send_keys(Keys.TAB)
    assert page.switch_to.active_element.get_attribute("id") == "in-negative_prompt"
    fill(page, "width", "256")
    fill(page, "height", "256")
    fill(page, "num_inference_steps", "2")
    page.find_element(By.ID, "in-prompt").send_keys(Keys.CONTROL, Keys.ENTER)
    wait(page, "document.querySelector('#results img') !== null")


def test_the_page_fits_a_phone_width_screen(page):
    page.set_window_size(390, 844)
    page.refresh()
    wait(page, "document.body.dataset.ready === 'true'")
    overflow = page.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    box = page.find_element(By.ID, "in-prompt").rect
    assert box["width"] > 250  # the form takes the screen's width, one column
    click(page, page.find_element(By.CSS_SELECTOR, "#more summary"))
    overflow = page.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(ARTIFACTS / "studio-phone.png"))


def test_the_control_images_a_job_returns_are_shown_after_its_images(page):
    """return_control_images: the page shows what steered the image, in the order of controlnets, and
    only inline or http(s) pictures (a javascript: URL in a tampered answer is dropped)."""
    dot = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
    page.execute_script("showResult(arguments[0])", {
        "images": [dot], "seed": 5, "seeds": [5], "timings": {"total": 1000}, "seconds": 1,
        "control_images": [dot, "javascript:alert(1)", dot]})
    captions = [element.text for element in page.find_elements(By.CSS_SELECTOR, "#results figure.control figcaption")]
    assert captions == ["Control image 1 (controlnets[0])", "Control image 3 (controlnets[2])"]
    assert len(page.find_elements(By.CSS_SELECTOR, "#results figure:not(.control) img")) == 1
    assert not page.find_elements(By.CSS_SELECTOR, "#results img[src^='javascript']")
