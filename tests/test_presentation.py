"""The Explain tab's presentation mode: the x̂₀ filmstrip and the slide drawn from a real run, and, in Chromium at a
projector's sizes, one screen without scrolling that the keys drive, on a replayed run of the bundled model."""

import base64
import io
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from bench.handmade import synthetic_run
from sdplay.explain.capture import explain
from sdplay.explain.filmstrip import BACKGROUND, BORDER, MAX_FRAME, MIN_FRAME, Filmstrip, filmstrip, strip_layout
from sdplay.explain.presentation import PLAY_SECONDS, reel, shown_word, slide
from sdplay.explain.render import CHOSEN_COLOUR, ExplainView, HeatmapSettings, presented
from sdplay.runtime.request import GenerationRequest
from tests.helpers import ARTIFACTS, GENERATE_TIMEOUT_MS, open_tab, shapes_run

STEPS = 5
REQUEST = GenerationRequest(prompt="a red cat sitting", negative_prompt="dog", sampler="Euler", steps=STEPS, seed=3)
# The five panels and the slider that must all be on screen, by the class each has in presentation mode.
ON_SCREEN = [".sdplay-present-step", ".sdplay-panel-final", ".sdplay-panel-x0", ".sdplay-panel-x_t"]
ON_SCREEN += [".sdplay-panel-heatmap", ".sdplay-panel-guidance", ".sdplay-filmstrip"]
PRESENTED = [panel.name for panel in presented()]  # the panels of the reel: all but the final image


@pytest.fixture(scope="module")
def view(manager) -> ExplainView:
    return ExplainView(explain(manager, REQUEST))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_the_filmstrip_shows_every_steps_x0_in_a_row_and_frames_the_shown_step(view: ExplainView) -> None:
    shown = 2
    strip = filmstrip(view, shown)
    layout = strip_layout(view)
    frame_width, frame_height = layout.frame
    assert frame_height == MAX_FRAME  # a short run gets the largest frames
    assert frame_width / frame_height == pytest.approx(view.size[0] / view.size[1], abs=0.02)
    assert strip.size == (STEPS * (frame_width + 2 * BORDER), frame_height + 2 * BORDER)

    frames = []
    for step in range(STEPS):
        left, top, right, bottom = layout.box(step)
        assert (left, top) == (step * (frame_width + 2 * BORDER) + BORDER, BORDER)
        frame = pixels(strip.crop((left, top, right, bottom)))
        expected = pixels(view.x0(step).resize(layout.frame, Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(frame, expected)
        frames.append(frame)
        # The border around the frame: the highlight colour for the shown step only.
        border = pixels(strip)[top - BORDER, left - BORDER : right + BORDER]
        colour = CHOSEN_COLOUR if step == shown else BACKGROUND
        assert (border == colour).all(), step
    assert not np.array_equal(frames[0], frames[-1])  # the run moves: coarse first, details last

    # A click lands on the step of the cell under it, clamped to the run.
    cell = frame_width + 2 * BORDER
    assert [layout.step_at(step * cell + cell / 2) for step in range(STEPS)] == list(range(STEPS))
    assert (layout.step_at(-5), layout.step_at(STEPS * cell + 40)) == (0, STEPS - 1)


def test_the_filmstrip_shows_decoded_steps_and_stays_small_for_long_runs(view: ExplainView) -> None:
    kept = Filmstrip(view)  # as a page keeps it while scrubbing
    box = kept.layout.box(1)
    before = pixels(kept.draw(0).crop(box))
    view.keep_decoded(1, Image.new("RGB", (32, 32), (255, 0, 255)))
    try:
        assert (pixels(kept.draw(0).crop(box)) == (255, 0, 255)).all()  # the kept frames follow the decoding
        assert (pixels(filmstrip(view, 0).crop(box)) == (255, 0, 255)).all()
        assert not (before == (255, 0, 255)).all()
    finally:
        view._decoded.clear()  # the module's view is shared
    long = strip_layout(ExplainView(synthetic_run(steps=150, tokens=4)))
    assert long.frame[1] == MIN_FRAME and long.size[0] == 150 * (MIN_FRAME + 2 * BORDER)


def test_a_slide_draws_what_the_explain_view_draws_for_its_panels(view: ExplainView) -> None:
    word = view.prompt_chips()[1][1]  # "red"
    settings = HeatmapSettings(word=word, colormap="inferno", opacity=0.5)
    drawn = view.draw(3, settings)
    shown = slide(view, 3, settings)
    assert shown["label"] == drawn["label"] and shown["label"].startswith(f"**Step 4 of {STEPS}**")
    assert PRESENTED == ["x0", "x_t", "heatmap", "guidance"] and list(shown) == ["label", *PRESENTED]
    for name in PRESENTED:
        np.testing.assert_array_equal(pixels(shown[name]), pixels(drawn[name]), err_msg=name)


def test_the_reel_holds_every_steps_slide_for_the_page_to_step_through(view: ExplainView) -> None:
    settings = HeatmapSettings(word=view.prompt_chips()[1][1], colormap="inferno", opacity=0.5)
    kept = Filmstrip(view)
    shown = reel(view, settings, kept)
    assert shown["cell"] == list(kept.layout.cell)
    assert len(shown["label"]) == STEPS and shown["label"][3].startswith(f"<strong>Step 4 of {STEPS}</strong> · t =")
    for step in (0, 3):
        for name in PRESENTED:
            drawn = slide(view, step, settings)[name]
            header, encoded = shown["frames"][name][step].split(",", 1)
            assert header == "data:image/jpeg;base64"
            sent = Image.open(io.BytesIO(base64.b64decode(encoded)))
            assert sent.size == drawn.size  # a small run's panels are not enlarged
            # JPEG at quality 90: close to the drawn panel, not equal.
            assert np.abs(pixels(sent) - pixels(drawn)).mean() < 4, (name, step)
    assert shown["frames"]["x0"][0] != shown["frames"]["x0"][STEPS - 1]


def test_the_words_to_pick_are_the_prompts_words(view: ExplainView) -> None:
    listed = view.prompt_chips()
    assert [label for label, _ in listed][:2] == ["a", "red"]
    assert all(not view.words[index].special for _, index in listed)
    assert shown_word(view, listed[1][1]) == listed[1][1]
    # The start token is no choice here: the prompt's first content word is shown instead.
    assert view.words[shown_word(view, 0)].text == "sitting"  # the head of "a red cat sitting"


# In Chromium ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay_file(shapes, tmp_path_factory) -> Path:
    """A run of the bundled model saved the evening before: the app serving it has another model loaded."""
    return shapes_run(shapes, tmp_path_factory.mktemp("runs"), steps=8)


def present(page: Page, path: Path):
    """Replay `path` on the Explain tab and switch presentation mode on; returns the presentation's root."""
    panel = open_tab(page, "Explain")
    panel.locator("input[type=file]").last.set_input_files(str(path))
    expect(panel.get_by_text(re.compile(r"^Step 8 of 8$"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    panel.get_by_label("Presentation", exact=True).check()
    stage = page.locator(".sdplay-presentation")
    expect(stage.get_by_text(re.compile(r"^Step 8 of 8"))).to_be_visible()
    expect(stage.locator(".sdplay-filmstrip img")).to_be_visible()
    return stage


def settled(page: Page, read: Callable[[], object], quiet_s: float, timeout_s: float) -> object:
    """Poll `read()` until its value has held for `quiet_s` seconds (the page has stopped changing it), and return
    that value; fail if it is still changing after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"still changing after {timeout_s} s: now {value!r}"
        page.wait_for_timeout(100)  # Playwright's sleep: the page's events (requests) are recorded meanwhile
        if (now := read()) != value:
            value, since = now, time.monotonic()
    return value


def click_frame(strip: Locator, step: int, of: int) -> None:
    """Click the middle of a 1-based step's frame in a filmstrip image shown scaled to fit its box (centred)."""
    box = strip.bounding_box()
    width, height = strip.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / width, box["height"] / height)
    left = (box["width"] - width * scale) / 2
    strip.click(position={"x": left + (step - 0.5) * width * scale / of, "y": box["height"] / 2})


def framed_step(stage: Locator, of: int) -> int:
    """The 1-based step whose filmstrip frame the page's outline is drawn over."""
    strip = stage.locator(".sdplay-filmstrip img")
    box, outline = strip.bounding_box(), stage.locator(".sdplay-strip-outline").bounding_box()
    width, height = strip.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / width, box["height"] / height)
    left = box["x"] + (box["width"] - width * scale) / 2
    return int((outline["x"] + outline["width"] / 2 - left) // (width * scale / of)) + 1


@pytest.mark.browser
def test_the_filmstrip_on_the_page_follows_the_step(page: Page, page_errors: list[str], replay_file) -> None:
    panel = open_tab(page, "Explain")
    panel.locator("input[type=file]").last.set_input_files(str(replay_file))
    label = panel.get_by_text(re.compile(r"^Step \d of 8$")).filter(visible=True)
    expect(label).to_have_text("Step 8 of 8", timeout=GENERATE_TIMEOUT_MS)
    strip = panel.locator(".sdplay-filmstrip-page img")
    strip.scroll_into_view_if_needed()  # the page's images load lazily
    expect(strip).to_have_js_property("naturalWidth", 8 * (MAX_FRAME + 2 * BORDER))
    first = strip.get_attribute("src")
    click_frame(strip, 3, of=8)
    expect(label).to_have_text("Step 3 of 8")
    expect(strip).not_to_have_attribute("src", first)  # the outline moved
    assert page_errors == []


@pytest.mark.browser
@pytest.mark.parametrize("width, height", [(1280, 720), (1024, 768)])
def test_presentation_fits_one_screen(page: Page, page_errors: list[str], replay_file, width, height) -> None:
    page.set_viewport_size({"width": width, "height": height})
    stage = present(page, replay_file)
    for selector in ON_SCREEN:
        box = page.locator(f".block{selector}").bounding_box()  # gr.HTML repeats its classes inside
        assert box is not None and box["width"] > 50 and box["height"] > 50, (selector, box)
        inside = box["x"] >= 0 and box["y"] >= 0
        inside &= box["x"] + box["width"] <= width and box["y"] + box["height"] <= height
        assert inside, (selector, box)
    for image in stage.locator("img").all():
        expect(image).to_have_js_property("complete", True)
    scroll, inner = page.evaluate("[document.scrollingElement.scrollHeight, window.innerHeight]")
    assert scroll <= inner
    # Large type: every caption, label and the step line at least 20 px.
    sizes = stage.locator(".prose").evaluate_all("nodes => nodes.map(n => parseFloat(getComputedStyle(n).fontSize))")
    assert sizes and min(sizes) >= 20, sizes
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"presentation-{width}x{height}.png")
    assert page_errors == []


@pytest.mark.browser
def test_presentation_keys_filmstrip_and_leaving(page: Page, page_errors: list[str], replay_file) -> None:
    page.set_viewport_size({"width": 1024, "height": 768})
    stage = present(page, replay_file)
    words = stage.locator(".sdplay-words")
    expect(words.get_by_label("circle", exact=True)).to_be_checked()  # "a large red circle on the left"
    heatmap = stage.locator(".sdplay-panel-heatmap img")
    before = heatmap.get_attribute("src")

    # Stepping shows the reel the page was sent (data URLs), not images the server draws and serves per step.
    page.keyboard.press("ArrowLeft")
    expect(stage.get_by_text(re.compile(r"^Step 7 of 8"))).to_be_visible()
    assert framed_step(stage, of=8) == 7
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowRight")
    expect(stage.get_by_text(re.compile(r"^Step 7 of 8"))).to_be_visible()
    assert heatmap.get_attribute("src").startswith("data:image/jpeg")
    page.keyboard.press("2")
    expect(words.get_by_label("large", exact=True)).to_be_checked()
    expect(heatmap).not_to_have_attribute("src", before)

    # Typing in a box is typing: the slider's number box keeps the arrow keys.
    number = stage.get_by_label("number input for Presentation step")
    number.focus()
    number.press("ArrowRight")
    number.press("Control+a")
    number.press("5")  # the step typed, not the fifth word
    number.blur()
    expect(stage.get_by_text(re.compile(r"^Step 5 of 8"))).to_be_visible()
    expect(words.get_by_label("large", exact=True)).to_be_checked()

    # A click on the filmstrip's first frame shows step 1.
    click_frame(stage.locator(".sdplay-filmstrip img"), 1, of=8)
    expect(stage.get_by_text(re.compile(r"^Step 1 of 8"))).to_be_visible()
    assert framed_step(stage, of=8) == 1

    # Space plays and pauses.
    page.keyboard.press(" ")
    expect(stage.get_by_role("button", name="⏸ Pause")).to_be_visible()
    expect(stage.get_by_text(re.compile(r"^Step [2-8] of 8"))).to_be_visible()
    page.keyboard.press(" ")
    expect(stage.get_by_role("button", name="▶ Play")).to_be_visible()

    # Paused, the step stops moving: it holds for more than two ticks of Play (once a tick sent before the pause has
    # landed).
    label = stage.locator(".prose.sdplay-step-label")
    paused = settled(page, label.inner_text, quiet_s=2.5 * PLAY_SECONDS, timeout_s=15)

    # Esc leaves: the Explain tab is back, at the presentation's step and word.
    at = min(int(re.search(r"Step (\d) of 8", paused).group(1)) + 1, 8)  # → stops at the last step
    page.keyboard.press("ArrowRight")
    expect(label).to_have_text(re.compile(rf"^\s*Step {at} of 8"))
    page.keyboard.press("Escape")
    expect(stage).to_be_hidden()
    panel = page.get_by_role("tabpanel").filter(visible=True)
    expect(panel.get_by_text(re.compile(rf"^Step {at} of 8")).filter(visible=True)).to_be_visible()
    expect(panel.locator(".chips").get_by_label("large", exact=True)).to_be_checked()
    expect(panel.get_by_label("Presentation", exact=True)).not_to_be_checked()
    assert page.evaluate("document.scrollingElement.scrollHeight") > 768  # the long page is back
    assert page_errors == []


@pytest.mark.browser
def test_presenting_without_a_run_and_a_one_step_run(page: Page, page_errors: list[str], shapes, tmp_path) -> None:
    """Before any run the screen says what to do; a one-step run (SD-Turbo's use) shows with nothing to scrub."""
    panel = open_tab(page, "Explain")
    toggle = panel.get_by_label("Presentation", exact=True)
    toggle.check()
    stage = page.locator(".sdplay-presentation")
    expect(stage.get_by_text("Press Explain to record a run, or replay a saved one")).to_be_visible()
    page.keyboard.press("Escape")
    expect(stage).to_be_hidden()

    panel.locator("input[type=file]").last.set_input_files(str(shapes_run(shapes, tmp_path, steps=1)))
    expect(panel.get_by_text(re.compile(r"1 steps · CFG [\d.]+ · seed 1 ·"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    toggle.check()
    expect(stage.get_by_text(re.compile(r"^Step 1 of 1"))).to_be_visible()
    for name in ("◀", "▶", "▶ Play"):
        expect(stage.get_by_role("button", name=name, exact=True)).to_be_disabled()
    # The keys that step and play do nothing; the one pressed after them picks a word, and is drawn once they are done.
    heatmap = stage.locator(".sdplay-panel-heatmap img")
    before = heatmap.get_attribute("src")
    page.keyboard.press("ArrowRight")
    page.keyboard.press(" ")
    page.keyboard.press("2")
    expect(stage.locator(".sdplay-words").get_by_label("large", exact=True)).to_be_checked()
    expect(heatmap).not_to_have_attribute("src", before)
    expect(stage.get_by_text(re.compile(r"^Step 1 of 1"))).to_be_visible()
    expect(stage.get_by_role("button", name="▶ Play", exact=True)).to_be_disabled()  # not playing
    expect(stage.locator(".sdplay-filmstrip img")).to_have_js_property("naturalWidth", MAX_FRAME + 2 * BORDER)
    assert page_errors == []


@pytest.mark.browser
def test_a_shown_run_leaves_the_page_quiet(page: Page, replay_file) -> None:
    """Once a replayed run is drawn, the page asks the server nothing more (an Inside section's trigger mode once
    made Gradio fire the Explain tab's change events about three times a second, forever)."""
    joins: list[float] = []
    page.on("request", lambda request: joins.append(time.monotonic()) if "/queue/join" in request.url else None)
    panel = open_tab(page, "Explain")
    panel.locator("input[type=file]").last.set_input_files(str(replay_file))
    expect(panel.get_by_text(re.compile(r"^Step 8 of 8$"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    # After the run's own redraws, no request for 4 s (the bug asked three times a second, forever).
    settled(page, lambda: len(joins), quiet_s=4, timeout_s=20)


@pytest.mark.browser
def test_presenting_a_run_of_an_empty_prompt(page: Page, page_errors: list[str]) -> None:
    """A run recorded with no prompt (Explain's first press, as a newcomer does it) presents with no word to pick
    and every panel drawn (the word picker once refused the start token: "Value: 0 … is not in the list of
    choices: []", and the panels stayed empty)."""
    panel = open_tab(page, "Explain")
    panel.get_by_label("Prompt", exact=True).fill("")  # it starts with the model's first example
    panel.get_by_label("number input for Steps").fill("3")
    panel.get_by_role("button", name="Explain", exact=True).click()
    expect(panel.get_by_text(re.compile(r"^Step 3 of 3$"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    panel.get_by_label("Presentation", exact=True).check()
    stage = page.locator(".sdplay-presentation")
    expect(stage.get_by_text(re.compile(r"^Step 3 of 3"))).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    for name in PRESENTED:
        expect(stage.locator(f".sdplay-panel-{name} img")).to_have_attribute("src", re.compile("^data:image/jpeg"))
    expect(stage.locator(".sdplay-words input[type=radio]")).to_have_count(0)
    page.keyboard.press("ArrowLeft")  # stepping happens in the page: it asks the server nothing that could fail
    expect(stage.get_by_text(re.compile(r"^Step 2 of 3"))).to_be_visible()
    assert page.evaluate("window.sdplayToasts") == []
    assert page_errors == []
