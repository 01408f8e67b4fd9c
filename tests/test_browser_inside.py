"""Browser tests of the Inside tab: each section's views, driven in Chromium through the app, with screenshots."""

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.helpers import ARTIFACTS, GENERATE_TIMEOUT_MS, open_tab, shapes_run

pytestmark = pytest.mark.browser


def record_a_run(page: Page, prompt: str = "a red cat", steps: int = 4) -> None:
    """Explain a prompt on the Explain tab and wait for its last step."""
    panel = open_tab(page, "Explain")
    panel.get_by_label("Prompt", exact=True).fill(prompt)
    panel.get_by_label("number input for Steps").fill(str(steps))
    panel.get_by_role("button", name="Explain", exact=True).click()
    expect(panel.get_by_text(re.compile(r"^Step (\d+) of \1$"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)


def test_inside_the_unet_and_attention_at_a_clicked_point(page: Page, page_errors: list[str], shapes, tmp_path) -> None:
    """The UNet section runs one UNet call at the Explain step and shows the diagram, the first convolution and
    every block; a click on the image shows where that place looks and which tokens it reads, also on a replay."""
    page.set_viewport_size({"width": 1024, "height": 768})
    record_a_run(page)
    panel = open_tab(page, "Inside")

    panel.get_by_role("button", name="Look inside the UNet at this step").click()
    expect(panel.get_by_text(re.compile(r"one UNet call at 8×8 latents"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    for panel_class in ("unet-diagram", "first-convolution"):
        expect(panel.locator(f".{panel_class} img")).to_have_attribute("src", re.compile(r"\.png$"))
    # The tiny model's UNet: conv_in, 2 down blocks, the middle, 2 up blocks, conv_out.
    blocks = panel.locator(".unet-blocks").get_by_text(re.compile(r"^(conv in|down \d|mid|up \d|conv out) ·"))
    expect(blocks).to_have_count(7)
    diagram = panel.locator(".unet-diagram")
    diagram.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "inside-unet.png")

    picker = panel.locator(".point-picker img")
    picker.scroll_into_view_if_needed()
    expect(picker).to_have_attribute("src", re.compile(r"\.png$"))
    box = picker.bounding_box()
    page.mouse.click(box["x"] + 0.75 * box["width"], box["y"] + 0.25 * box["height"])
    expect(panel.locator(".token-shares img")).to_have_attribute(
        "src", re.compile(r"\.png$"), timeout=GENERATE_TIMEOUT_MS
    )
    expect(panel.get_by_text(re.compile(r"places · averaged over \d+ layers? and \d+ heads"))).to_be_visible(
        timeout=GENERATE_TIMEOUT_MS
    )
    expect(panel.locator(".self-attention img")).to_have_attribute("src", re.compile(r"\.jpe?g$"))
    panel.get_by_label("Per head (runs the UNet once)").check()
    expect(panel.get_by_text("Self-attention per head")).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    panel.get_by_text("Attention at a point").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "inside-attention.png")

    # A replayed run of another model: the bars come from the recording; self-attention says what it needs.
    before = picker.get_attribute("src")
    explain_panel = open_tab(page, "Explain")
    explain_panel.locator("input[type=file]").last.set_input_files(str(shapes_run(shapes, tmp_path, steps=2)))
    expect(explain_panel.get_by_text(re.compile(r"^Step 2 of 2$"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    panel = open_tab(page, "Inside")
    bars = panel.locator(".token-shares img")
    expect(bars).to_have_count(0)  # cleared for the new run
    expect(picker).not_to_have_attribute("src", before)  # the replayed run's image
    expect(picker).to_have_js_property("complete", True)
    picker.scroll_into_view_if_needed()
    box = picker.bounding_box()
    page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + 0.5 * box["height"])
    expect(bars).to_have_attribute("src", re.compile(r"\.png$"), timeout=GENERATE_TIMEOUT_MS)
    expect(panel.get_by_text("This run was made by shapes, and the loaded model is tiny")).to_be_visible(
        timeout=GENERATE_TIMEOUT_MS
    )
    assert page_errors == []


def test_inside_text_embeddings_and_latent_space(page: Page, page_errors: list[str], shapes, tmp_path: Path) -> None:
    """The text section draws the run's tokens and asks the model for nearest tokens and the causal test; the latent
    section states the compression, shows the channels and round-trips the run's image through the VAE. A replayed
    run of another model says what needs that model."""
    page.set_viewport_size({"width": 1024, "height": 768})
    record_a_run(page, "a red cat", steps=3)
    panel = open_tab(page, "Inside")

    expect(panel.locator(".prose.sdplay-token-table").get_by_role("cell", name="red</w>", exact=True)).to_be_visible()
    for name in ("static-strip", "contextual-strip", "static-similarity", "contextual-similarity", "movement"):
        expect(panel.locator(f".sdplay-{name} img")).to_have_attribute("src", re.compile(r"\.png$"))
    panel.locator(".sdplay-static-strip").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "inside-text-vectors.png")
    panel.get_by_role("button", name="Find each token's nearest vocabulary tokens").click()
    neighbours = panel.locator(".prose.sdplay-neighbours")
    expect(neighbours.get_by_text(re.compile(r"nearest vocabulary tokens \(cosine similarity\)"))).to_be_visible(
        timeout=GENERATE_TIMEOUT_MS
    )
    expect(neighbours.get_by_role("cell", name="<start>", exact=True)).to_be_visible()  # not an empty cell
    panel.get_by_role("button", name="Edit a later word, then an early one").click()
    note = panel.locator(".prose.sdplay-causal-note")
    expect(note).to_contain_text("The encoder is causal", timeout=GENERATE_TIMEOUT_MS)
    expect(note).to_contain_text("3 tokens before it changed by at most 0")  # "cat", after <start> a red
    chart = panel.locator(".sdplay-causal-chart img")
    expect(chart).to_have_attribute("src", re.compile(r"\.png$"))
    chart.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "inside-text.png")

    # The tiny model: 64×64×3 pixel values, 4 channels × 8×8 latent values.
    expect(panel.locator(".prose.sdplay-compression")).to_contain_text("48× fewer")
    expect(panel.locator(".sdplay-latent-channels img")).to_have_attribute("src", re.compile(r"\.png$"))
    panel.get_by_role("button", name="Use the Explain run's image").click()
    panel.get_by_role("button", name="Encode and decode", exact=True).click()
    expect(panel.locator(".prose.sdplay-psnr")).to_contain_text(
        re.compile(r"PSNR [\d.]+ dB"), timeout=GENERATE_TIMEOUT_MS
    )
    expect(panel.locator(".sdplay-decoded img")).to_have_attribute("src", re.compile(r"\.png$"))
    panel.locator(".sdplay-image-latent").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "inside-latent.png")

    # A run of the bundled model replayed here: its vectors show, and the section says what needs its model.
    explain_panel = open_tab(page, "Explain")
    explain_panel.locator("input[type=file]").last.set_input_files(str(shapes_run(shapes, tmp_path, steps=2)))
    expect(explain_panel.get_by_text(re.compile(r"^Step 2 of 2$"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    panel = open_tab(page, "Inside")
    expect(panel.locator(".prose.sdplay-text-status")).to_contain_text("need shapes's own table and encoder")
    expect(
        panel.locator(".prose.sdplay-token-table").get_by_role("cell", name="circle</w>", exact=True)
    ).to_be_visible()
    panel.get_by_role("button", name="Edit a later word, then an early one").click()
    toast = page.get_by_test_id("toast-body")  # the error, with what to do
    expect(toast.get_by_text(re.compile(r"This run was made by shapes, and \S+ is loaded: load shapes"))).to_be_visible(
        timeout=GENERATE_TIMEOUT_MS
    )
    assert page_errors == []
