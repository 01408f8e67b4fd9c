"""Browser test of the Compare tab: a preset A/B shows the slider, the difference and x̂₀ step by step; the ablation
view re-runs A without a word and shows how every word's attention moved."""

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.helpers import GENERATE_TIMEOUT_MS, open_tab

SCREENSHOT = Path(__file__).parent / "artifacts" / "compare.png"  # git-ignored

pytestmark = pytest.mark.browser


def image_src(panel, css: str) -> str:
    image = panel.locator(f"{css} img").first
    expect(image).to_have_attribute("src", re.compile(r"/gradio_api/file="), timeout=GENERATE_TIMEOUT_MS)
    return image.get_attribute("src")


def test_compare_a_preset_pair_and_ablate_a_word(page: Page, page_errors: list[str]) -> None:  # noqa: F811
    # Explain's prompt and settings open in Compare with one click.
    explain = open_tab(page, "Explain")
    explain.get_by_label("Prompt", exact=True).fill("a red cat on a mat")
    explain.get_by_role("button", name=re.compile("open this prompt in Compare")).click()
    expect(page.get_by_role("tab", name="Compare", exact=True)).to_have_attribute(
        "aria-selected", "true", timeout=GENERATE_TIMEOUT_MS
    )
    panel = page.get_by_role("tabpanel").filter(visible=True)
    expect(panel.get_by_label("Prompt", exact=True)).to_have_value("a red cat on a mat", timeout=GENERATE_TIMEOUT_MS)

    # The tiny model has an open vocabulary: the Stable Diffusion pairs are offered.
    panel.get_by_label("Preset contrast pair", exact=True).click()
    page.get_by_role("option", name="SD: red vs blue", exact=True).click()
    expect(panel.get_by_label("Prompt", exact=True)).to_have_value(
        "a photo of a red car on a street", timeout=GENERATE_TIMEOUT_MS
    )
    expect(panel.get_by_label("B's value", exact=True)).to_have_value("red -> blue", timeout=GENERATE_TIMEOUT_MS)
    panel.get_by_label("number input for Steps", exact=True).fill("4")
    panel.get_by_label("Seed (-1: random)", exact=True).fill("5")
    panel.get_by_role("button", name="Compare", exact=True).click()

    # Both images in the slider, labelled by what differs, and the difference image.
    summary = panel.locator(".prose.compare-summary")
    expect(summary).to_contain_text("the predictions part at", timeout=GENERATE_TIMEOUT_MS)
    expect(panel.locator(".ab-slider img")).to_have_count(2, timeout=GENERATE_TIMEOUT_MS)
    expect(panel.get_by_text("A: red | B: blue")).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    image_src(panel, ".ab-difference")

    # Scrub: x̂₀ of A follows the step slider.
    before = image_src(panel, ".x0-a")
    scrubber = panel.get_by_label("number input for Step", exact=True)
    scrubber.fill("1")
    scrubber.press("Enter")
    expect(panel.locator(".x0-a img")).not_to_have_attribute("src", before, timeout=GENERATE_TIMEOUT_MS)

    # Pick a word: its attention in A (and in B) is drawn.
    heat = image_src(panel, ".heat-a")
    panel.get_by_label("Word of A (B: the word in its place)", exact=True).click()
    page.get_by_role("option", name="street", exact=True).click()
    expect(panel.locator(".heat-a img")).not_to_have_attribute("src", heat, timeout=GENERATE_TIMEOUT_MS)

    # Ablate "red" (remove it): A is reused, the ablated run shows with every word's shift.
    panel.get_by_label("Word of A's prompt", exact=True).click()
    page.get_by_role("option", name="red (5)", exact=True).click()
    panel.get_by_role("button", name="Ablate", exact=True).click()
    ablation = panel.locator(".prose.ablation-summary")
    expect(ablation).to_contain_text("the images differ by", timeout=GENERATE_TIMEOUT_MS)
    expect(panel.locator(".ablation-slider img")).to_have_count(2, timeout=GENERATE_TIMEOUT_MS)
    expect(panel.get_by_text("A | without 'red'")).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    image_src(panel, ".ablation-difference")
    table = panel.locator(".shift-table").first
    expect(table).to_contain_text("car", timeout=GENERATE_TIMEOUT_MS)
    expect(table).to_contain_text("street", timeout=GENERATE_TIMEOUT_MS)

    for image in panel.locator("img").all():
        image.scroll_into_view_if_needed()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert page_errors == []
