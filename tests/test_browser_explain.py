"""Browser test of the Explain tab: record a run, scrub to another step, pick another word, see the heatmap change.

It also saves a full-page screenshot, to look at the page as a student would see it.
"""

import re
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from tests.test_browser import GENERATE_TIMEOUT_MS, open_tab

SCREENSHOT = Path(__file__).parent / "artifacts" / "explain.png"  # git-ignored


def heatmap_src(panel: Locator) -> str:
    image = panel.locator(".heatmap img")
    expect(image).to_have_attribute("src", re.compile(r"/gradio_api/file=.*\.jpeg$"))
    return image.get_attribute("src")


def changed_from(panel: Locator, before: str) -> str:
    """Wait until the heatmap shows another image than `before`, and return it."""
    expect(panel.locator(".heatmap img")).not_to_have_attribute("src", before)
    return heatmap_src(panel)


def test_explain_scrub_and_pick_a_word(page: Page, page_errors: list[str]) -> None:  # noqa: F811 (fixtures)
    panel = open_tab(page, "Explain")
    panel.get_by_label("Prompt", exact=True).fill("a red cat sitting")
    panel.get_by_label("Negative prompt", exact=True).fill("dog")
    panel.get_by_label("number input for Steps").fill("8")
    panel.get_by_role("button", name="Explain", exact=True).click()
    expect(panel.get_by_text("Step 8 of 8", exact=False)).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    first = heatmap_src(panel)

    # Scrub: the step label and the heatmap follow the slider.
    scrubber = panel.get_by_label("number input for Step", exact=True)
    scrubber.fill("3")
    scrubber.press("Enter")
    expect(panel.get_by_text("Step 3 of 8", exact=False)).to_be_visible()
    scrubbed = changed_from(panel, first)

    # Pick a word: the chips merge the letters of "sitting" back into one word.
    chips = panel.locator(".chips")
    expect(chips.get_by_label("sitting", exact=True)).to_be_visible()
    chips.get_by_label("cat", exact=True).check()
    changed_from(panel, scrubbed)

    # The export is offered for download, named after the prompt.
    download = panel.locator("a[href*='/explain-a-red-cat-sitting-']")
    expect(download).to_have_attribute("href", re.compile(r"/explain-a-red-cat-sitting-\d+\.safetensors$"))
    # Galleries load their images lazily: bring each into view so that the screenshot shows them.
    for image in panel.locator("img").all():
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert page_errors == []
