"""The demo in a real browser: headless Chromium driven by Playwright, one classification in each tab.

The app runs a tiny Llama-shaped model (no adapter: the page's untrained notice shows), so each click
is quick; every label the page shows is checked against what the handler computes for the same input.
Chromium comes from the Debian packages `chromium` and `chromium-driver` (the project's set-up installs
them); Playwright's own browser download cannot work offline. A screenshot of each tab is saved in
`runs/space_screenshots/` (or `$TRAINER_EXT_SCREENSHOTS`) for a person to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from space import (
    handlers,
    model_store,
)
from space.app import serve

REPO_ROOT = Path(__file__).resolve().parent.parent

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 60_000
SCREENSHOTS = Path(os.environ.get("TRAINER_EXT_SCREENSHOTS") or REPO_ROOT / "runs" / "space_screenshots")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="needs Chromium at /usr/bin/chromium: apt-get install chromium chromium-driver",
)


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    settings = model_store.SpaceSettings(
        adapter=None, base_model=str(tiny_model_dir("llama")), quantization="none"
    )
    store = model_store.ModelStore(settings)
    demo, url = serve(store)
    yield url, handlers.DemoHandlers(store)
    demo.close()


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(served[0])
        yield page
        browser.close()


def top_label(probs: dict[str, float]) -> str:
    return max(probs, key=probs.get)


def shown_label(page, output_id: str, before: str = "") -> str:
    """The top label a `gr.Label` shows, once it differs from `before`."""
    locator = page.locator(f"#{output_id} [data-testid='label-output-value']")
    page.wait_for_function(
        "([sel, before]) => { const e = document.querySelector(sel); return e && e.innerText.trim() && "
        "e.innerText.trim() !== before; }",
        arg=[f"#{output_id} [data-testid='label-output-value']", before],
    )
    return locator.inner_text().strip()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_page_says_the_model_is_untrained(page):
    notice = page.locator("#model-notice").inner_text()
    assert "No trained adapter found" in notice and "runs untrained" in notice


def test_moderation_tab(page, served):
    message = "Thanks to everyone who helped at the school fair today!"
    page.locator("#moderation-input textarea").fill(message)
    page.locator("#moderation-button").click()
    assert shown_label(page, "moderation-output") == top_label(served[1].moderate(message))
    screenshot(page, "moderation")


def test_moderation_tab_shows_a_clear_error(page):
    page.locator("#moderation-input textarea").fill("   ")
    page.locator("#moderation-button").click()
    toast = page.locator("[data-testid='toast-body']").first
    toast.wait_for()
    text = toast.inner_text()
    assert "The message is empty" in text and "Traceback" not in text
    toast.locator("button").first.click()


def test_topics_tab(page, served):
    page.get_by_role("tab", name="Zero-shot topics").click()
    headline = "Parliament delays the vote on the housing bill"
    page.locator("#topics-input textarea").fill(headline)
    page.locator("#topics-categories textarea, #topics-categories input").first.fill("politics, sport, tech")
    page.get_by_label("base model", exact=True).check()
    page.locator("#topics-button").click()
    expected = served[1].classify_topic(headline, "politics, sport, tech", "base")
    assert shown_label(page, "topics-output") == top_label(expected)
    screenshot(page, "topics")


def test_batch_tab(page, served, tmp_path):
    page.get_by_role("tab", name="Batch").click()
    table = tmp_path / "inbox.csv"
    table.write_text("id,message\n1,See you at the match tonight\n2,What a useless idiot\n", encoding="utf-8")
    page.locator("#batch-file input[type='file']").set_input_files(str(table))
    page.wait_for_function("() => document.querySelector('#batch-column input')?.value === 'message'")
    page.locator("#batch-button").click()
    summary = page.locator("#batch-summary")
    summary.get_by_text("Classified 2 messages").wait_for()
    _, preview, expected_summary = served[1].classify_csv(str(table), "message")
    assert summary.inner_text().strip() == expected_summary.replace("**", "")
    assert "inbox_predictions.csv" in "".join(page.locator("#batch-output").inner_text().split())
    for label in preview["predicted_label"]:
        assert page.locator("#batch-preview").get_by_text(label, exact=True).count() >= 1
    screenshot(page, "batch")


def test_generate_tab(page, served):
    page.get_by_role("tab", name="Generate").click()
    page.locator("#generate-input textarea").fill("Once upon a time")
    page.locator("#generate-tokens input[type='number']").fill("5")
    page.locator("#generate-tokens input[type='number']").press("Enter")
    page.locator("#generate-button").click()
    expected = served[1].generate("Once upon a time", "greedy", 5)
    page.wait_for_function("() => document.querySelector('#generate-output textarea')?.value.length > 0")
    assert page.locator("#generate-output textarea").input_value() == expected
    screenshot(page, "generate")
