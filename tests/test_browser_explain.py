"""Browser test of the Explain tab: record a run, scrub to another step, pick another word, see the heatmap change.

It also saves a full-page screenshot, to look at the page as a student would see it.
"""

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.helpers import GENERATE_TIMEOUT_MS, open_tab, shapes_run

SCREENSHOT = Path(__file__).parent / "artifacts" / "explain.png"  # git-ignored

pytestmark = pytest.mark.browser
# Watches a component's status tracker (Gradio's progress overlay on it): `window.sdplayJob.ended` once a job has
# shown there and gone, however fast (each change of its class is a record, with the class it had before).
WATCH_JOB = """(block) => {
    const tracker = block.querySelector("[data-testid=status-tracker]");
    const job = window.sdplayJob = { started: false, ended: false };
    new MutationObserver((records) => {
        for (const record of records) {
            if (!record.oldValue.split(" ").includes("hide")) job.started = true;
        }
        if (job.started && tracker.classList.contains("hide")) job.ended = true;
    }).observe(tracker, { attributes: true, attributeFilter: ["class"], attributeOldValue: true });
}"""


def heatmap_src(panel: Locator) -> str:
    image = panel.locator(".heatmap img")
    expect(image).to_have_attribute("src", re.compile(r"/gradio_api/file=.*\.jpeg$"))
    return image.get_attribute("src")


def changed_from(panel: Locator, before: str) -> str:
    """Wait until the heatmap shows another image than `before`, and return it."""
    expect(panel.locator(".heatmap img")).not_to_have_attribute("src", before)
    return heatmap_src(panel)


def overlap(a: dict, b: dict) -> bool:
    """Whether two bounding boxes ({x, y, width, height}) intersect."""
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and (b["y"] < a["y"] + a["height"])
    )


def label_and_first_tile(panel: Locator, label: str) -> tuple[dict, dict]:
    """The bounding boxes of a gallery's visible label and of the first tile after it, wherever Gradio puts it."""
    text = panel.locator(f"xpath=//*[normalize-space(text())='{label}']").filter(visible=True)
    tile = text.locator("xpath=following::*[contains(@class, 'grid-container')][1]/*[1]")
    expect(tile).to_be_visible()
    return text.bounding_box(), tile.bounding_box()


def test_explain_scrub_and_pick_a_word(page: Page, page_errors: list[str]) -> None:
    panel = open_tab(page, "Explain")
    panel.get_by_label("Prompt", exact=True).fill("a red cat on a mat")
    panel.get_by_label("Negative prompt", exact=True).fill("dog")
    panel.get_by_label("number input for Steps").fill("8")
    panel.get_by_role("button", name="Explain", exact=True).click()
    # The last step is shown (PLMS records one step more than asked for: match any count).
    expect(panel.get_by_text(re.compile(r"^Step (\d+) of \1$"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    first = heatmap_src(panel)

    # The first word shown is the prompt's first noun, not "a"; the chips merge the letters of "mat" into a word.
    chips = panel.locator(".chips")
    expect(chips.get_by_label("cat", exact=True)).to_be_checked()
    expect(chips.get_by_label("mat", exact=True)).to_be_visible()

    # Scrub: the step label and the heatmap follow the slider.
    scrubber = panel.get_by_label("number input for Step", exact=True)
    scrubber.fill("3")
    scrubber.press("Enter")
    expect(panel.get_by_text(re.compile(r"^Step 3 of \d+$"))).to_be_visible()
    scrubbed = changed_from(panel, first)

    # Pick a word: the heatmap and the timeline charts (the chosen word's line in colour) follow.
    timeline = panel.locator(".timeline img")
    expect(timeline).to_have_count(2)
    charts = [image.get_attribute("src") for image in timeline.all()]
    chips.get_by_label("red", exact=True).check()
    changed_from(panel, scrubbed)
    for image, before in zip(timeline.all(), charts, strict=True):
        expect(image).not_to_have_attribute("src", before)

    # The galleries' labels sit clear of their first tiles.
    for label in ("The chosen word in each UNet block", "Negative prompt words"):
        text, tile = label_and_first_tile(panel, label)
        assert not overlap(text, tile), (label, text, tile)

    # The export is offered for download, named after the prompt.
    download = panel.locator("a[href*='/explain-a-red-cat-on-a-mat-']")
    expect(download).to_have_attribute("href", re.compile(r"/explain-a-red-cat-on-a-mat-\d+\.safetensors$"))
    # Galleries load their images lazily: bring each into view so that the screenshot shows them.
    for image in panel.locator("img").filter(visible=True).all():  # not the hidden presentation's
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert page_errors == []


def test_a_replayed_run_states_its_own_models_numbers(page: Page, page_errors: list[str], shapes, tmp_path) -> None:
    """The app runs the tiny model (VAE factor 8); a replayed run of the bundled one (factor 4) says 4×4."""
    path = shapes_run(shapes, tmp_path, steps=2)
    panel = open_tab(page, "Explain")
    short = panel.get_by_text("x_t: the noisy latent", exact=False)
    short.locator("xpath=following::button[starts-with(normalize-space(.), 'More')][1]").click()  # open "More"
    x_t = panel.get_by_text(re.compile(r"compresses each \d+×\d+ patch"))
    expect(x_t).to_contain_text("each 8×8 patch")
    panel.locator("input[type=file]").last.set_input_files(str(path))
    expect(panel.get_by_text(re.compile(r"^Step 2 of 2$"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    expect(x_t).to_contain_text("each 4×4 patch of pixels into 4 numbers")
    expect(panel.locator(".chips").get_by_label("circle", exact=True)).to_be_checked()
    assert page_errors == []


def test_a_one_step_run_replays_and_records(page: Page, page_errors: list[str], shapes, tmp_path) -> None:
    """SD-Turbo's normal use: Gradio refuses a slider from 1 to 1, so one step showed an error in both ways."""
    path = shapes_run(shapes, tmp_path, steps=1)
    panel = open_tab(page, "Explain")
    label = panel.get_by_text(re.compile(r"^Step 1 of 1$"))
    scrubber = panel.get_by_label("number input for Step", exact=True)
    expect(scrubber).to_be_visible()

    panel.locator("input[type=file]").last.set_input_files(str(path))
    expect(panel.get_by_text(re.compile(r"1 steps · CFG [\d.]+ · seed 1 ·"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    expect(label).to_be_visible()
    expect(scrubber).to_be_hidden()  # nothing to scrub

    panel.get_by_label("Prompt", exact=True).fill("a red cat")
    panel.get_by_label("number input for Steps").fill("1")
    panel.get_by_label("Seed (-1: random)").fill("5")
    panel.get_by_role("button", name="Explain", exact=True).click()
    expect(panel.get_by_text(re.compile(r"1 steps · CFG [\d.]+ · seed 5 ·"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    expect(label).to_be_visible()
    expect(panel.locator(".heatmap img")).to_be_visible()

    # The tiny model's VAE is cheap: x̂₀ was decoded after the run unasked (test_explain_shapes.py checks its pixels).
    # Pressing Decode redoes it, quietly: the job runs and ends (or a toast shows), and no toast says anything.
    panel.locator(".x0").evaluate(WATCH_JOB)
    panel.get_by_role("button", name="Decode x̂₀ of every step with the VAE").click()
    page.wait_for_function("window.sdplayJob.ended || window.sdplayToasts.length > 0", timeout=GENERATE_TIMEOUT_MS)
    assert page.evaluate("window.sdplayToasts") == []
    expect(panel.locator(".x0 img")).to_have_attribute("src", re.compile(r"/gradio_api/file="))
    assert page_errors == []
