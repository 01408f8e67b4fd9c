"""Browser test: headless Chromium opens the app, visits every tab, generates an image and sends it to img2img.

It checks what a user sees (tabs, gallery, parameters) and that the page logs no errors; it saves a screenshot.
"""

import re
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

SCREENSHOT = Path(__file__).parent / "artifacts" / "browser.png"  # git-ignored
PROMPT = "a red cat"
GENERATE_TIMEOUT_MS = 60_000
# Where Gradio serves a result file; the galleries save PNG (format="png"), which keeps the parameters chunk.
SERVED_PNG = re.compile(r"/gradio_api/file=.*\.png$")


def open_tab(page: Page, name: str) -> Locator:
    """Select a tab and return its panel: Gradio shows only the selected tab's panel."""
    tab = page.get_by_role("tab", name=name, exact=True)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")
    return page.get_by_role("tabpanel").filter(visible=True)


def test_tabs_generate_and_send(page: Page, page_errors: list[str]) -> None:
    # Every tab renders its own controls.
    characteristic = {
        "Image-to-Image": lambda panel: panel.get_by_text("Denoising strength", exact=True),
        "Inpaint": lambda panel: panel.get_by_text("Mask blur", exact=True),
        "PNG Info": lambda panel: panel.get_by_role("button", name="Send to Text-to-Image"),
        "Text-to-Image": lambda panel: panel.get_by_role("button", name="Generate"),
    }
    for name, element in characteristic.items():
        expect(element(open_tab(page, name))).to_be_visible()

    # Text-to-Image is selected last: type a prompt, generate, and see a served PNG in the results gallery.
    panel = page.get_by_role("tabpanel").filter(visible=True)
    panel.get_by_label("Prompt", exact=True).fill(PROMPT)
    panel.get_by_role("button", name="Generate").click()
    # The parameters arrive with the final images (previews carry none), each captioned with its seed.
    # This output textbox has no accessible name (its <label> also holds the Copy button): find it by its label.
    parameters = panel.locator("label", has_text="Generation parameters").locator("textarea")
    infotext = re.compile(rf"^{re.escape(PROMPT)}\nSteps: 20, Sampler: .*, Seed: (\d+), Size: 64x64")
    expect(parameters).to_have_value(infotext, timeout=GENERATE_TIMEOUT_MS)
    seed = infotext.match(parameters.input_value()).group(1)
    result = panel.locator(".results").get_by_role("img", name=f"Seed {seed}", exact=True)
    expect(result).to_have_attribute("src", SERVED_PNG)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)

    # "Send to Image-to-Image" switches tab and puts the result into its image box.
    panel.get_by_role("button", name="Send to Image-to-Image").click()
    expect(page.get_by_role("tab", name="Image-to-Image", exact=True)).to_have_attribute("aria-selected", "true")
    panel = page.get_by_role("tabpanel").filter(visible=True)
    expect(panel.get_by_test_id("image").locator("img")).to_have_attribute("src", SERVED_PNG)

    assert page_errors == []
