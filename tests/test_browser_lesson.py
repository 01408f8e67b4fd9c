"""Browser test of the Lesson tab at a projector's 1024×768: record the lesson's run on the bundled model and walk
all ten stages (a screenshot of each into tests/artifacts/), set up a comparison from a stage, replay a file of
another model, and read the lesson in French."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from sdplay.explain.capture import explain
from sdplay.explain.export import save_run
from sdplay.lesson.stages import STAGES, translations
from sdplay.runtime.composition import local_manager
from sdplay.runtime.request import GenerationRequest
from tests.helpers import ARTIFACTS, GENERATE_TIMEOUT_MS, LOAD_TIMEOUT_MS, SHAPES, open_tab, served_app

EN, FR = translations()["en"], translations()["fr"]
# Recording the 12 steps takes about a second on a quiet CPU; the machines that run these tests are often busy.
RECORD_TIMEOUT_MS = 3 * GENERATE_TIMEOUT_MS

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lesson_url() -> Iterator[str]:
    """The app on the bundled model, offline, as a teacher starts it."""
    yield from served_app(SHAPES, log_name="lesson-app.log")


def opened(browser: Browser, url: str, errors: list[str], locale: str = "en-US") -> Page:
    context = browser.new_context(viewport={"width": 1024, "height": 768}, locale=locale)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda m: errors.append(f"console error: {m.text}") if m.type == "error" else None)
    page.goto(url, timeout=LOAD_TIMEOUT_MS)
    expect(page.get_by_role("tab", name="Lesson", exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    return page


def lesson_tab(page: Page) -> Locator:
    open_tab(page, "Lesson")
    return page.get_by_role("tabpanel").filter(visible=True).first  # the stages are tab panels too


def stage_shown(panel: Locator, index: int, texts: dict[str, str]) -> Locator:
    """Wait until stage `index` is on screen with every panel drawn; returns the stage's panel."""
    stage = STAGES[index]
    expect(panel.locator("button.step-button.active")).to_contain_text(texts[f"stage_{stage.id}_title"])
    shown = panel.get_by_role("tabpanel").filter(visible=True)
    words = re.sub(r"\*", "", texts[f"stage_{stage.id}_text"])  # as the Markdown shows it
    expect(shown.locator(".prose.lesson-text")).to_contain_text(words[:60])
    images = shown.locator(".lesson-panel img")
    expect(images).to_have_count(len(stage.panels), timeout=GENERATE_TIMEOUT_MS)
    for image in images.all():
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("img => img.naturalWidth") >= 64
    return shown


def test_the_lesson_walks_all_ten_stages_on_the_bundled_model(browser: Browser, lesson_url: str) -> None:
    errors: list[str] = []
    page = opened(browser, lesson_url, errors)
    panel = lesson_tab(page)
    panel.get_by_role("button", name=EN["lesson_record"]).click()
    status = panel.locator(".prose.lesson-status")
    expect(status).to_contain_text("12 steps · CFG 4.0 · seed 1 · 64×64 · model shapes", timeout=RECORD_TIMEOUT_MS)
    expect(panel.locator(".lesson-words").get_by_label("circle", exact=True)).to_be_checked()  # a content word

    ARTIFACTS.mkdir(exist_ok=True)
    step = panel.get_by_label("number input for Step (for the stages that show one)")
    for index, stage in enumerate(STAGES):
        shown = stage_shown(panel, index, EN)
        if stage.step is not None:  # entering the stage put the step where its story is
            expect(step).to_have_value(str(stage.step_at(12)))
        button = shown.locator(".lesson-try-button")
        expect(button).to_contain_text(" · ")  # the change it sets up, e.g. "CFG scale: 1"
        expect(shown.locator(".prose.lesson-note")).to_have_text("")  # the model is loaded: nothing is missing
        panel.locator(".lesson-walk").screenshot(path=ARTIFACTS / f"lesson-{index + 1:02d}-{stage.id}.png")
        if index + 1 < len(STAGES):
            shown.get_by_role("button", name=EN["lesson_next"]).click()

    # Scrubbing redraws the stage on screen: x̂₀ at another step.
    panel.locator("button.step-button[data-tab-id='8']").click()  # back to the trajectory, a stage visited
    x0 = panel.get_by_role("tabpanel").filter(visible=True).locator(".lesson-panel-x0 img")
    # The stage's own redraw on arrival has landed once the step is where the stage starts (the last stage left it
    # elsewhere): the step and the panels come in one update.
    assert STAGES[8].step_at(12) != STAGES[-1].step_at(12)
    expect(step).to_have_value(str(STAGES[8].step_at(12)))
    before = x0.get_attribute("src")
    step.fill("3" if step.input_value() != "3" else "5")  # another step than the one shown
    step.press("Enter")
    expect(x0).not_to_have_attribute("src", before, timeout=60_000)  # a redraw, on a busy machine too

    # "Try this" of the guidance stage: Compare opens with A the lesson's run and B at CFG scale 1.
    panel.locator("button.step-button[data-tab-id='7']").click()
    shown = stage_shown(panel, 7, EN)
    shown.locator(".lesson-try-button").click()
    expect(page.get_by_role("tab", name="Compare", exact=True)).to_have_attribute("aria-selected", "true")
    compare = page.get_by_role("tabpanel").filter(visible=True)
    expect(compare.get_by_label("Prompt", exact=True)).to_have_value(
        "a large red circle on the left on a gray background"
    )
    expect(compare.get_by_label("Seed (-1: random)")).to_have_value("1")
    expect(compare.get_by_label("B differs in")).to_have_value("CFG scale")
    expect(compare.get_by_label("B's value")).to_have_value("1")
    assert errors == []


def tiny_run(model: Path, folder: Path) -> Path:
    """A run of another model (the tiny random one), saved the evening before."""
    manager = local_manager(device="cpu")
    manager.load(str(model))
    request = GenerationRequest(prompt="a red cat on a mat", sampler="Euler", steps=3, seed=5)
    return save_run(explain(manager, request), folder / "tiny.safetensors")


def test_a_replayed_file_of_another_model_gives_the_lesson(
    browser: Browser, lesson_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    errors: list[str] = []
    page = opened(browser, lesson_url, errors)
    panel = lesson_tab(page)
    with page.expect_file_chooser() as chooser:
        panel.get_by_role("button", name=EN["lesson_replay"]).click()
    chooser.value.set_files(str(tiny_run(tiny_model, tmp_path)))
    expect(panel.locator(".prose.lesson-status")).to_contain_text("3 steps", timeout=RECORD_TIMEOUT_MS)
    expect(panel.locator(".lesson-words").get_by_label("cat", exact=True)).to_be_checked()
    stage_shown(panel, 0, EN).get_by_role("button", name=EN["lesson_next"]).click()
    shown = stage_shown(panel, 1, EN)
    # The nearest vocabulary tokens need the run's model: the stage says so plainly, and shows what the file holds.
    note = shown.locator(".prose.lesson-note")
    expect(note).to_contain_text(EN["lesson_needs_model"][:40])
    expect(note).to_contain_text("tiny")
    expect(shown.locator(".prose.lesson-label")).to_have_text([EN["panel_static"], EN["panel_similarity"]])
    panel.locator(".lesson-walk").screenshot(path=ARTIFACTS / "lesson-replayed-02-token_embeddings.png")
    for index in range(2, len(STAGES)):
        shown.get_by_role("button", name=EN["lesson_next"]).click()
        shown = stage_shown(panel, index, EN)
    assert errors == []


def test_the_lesson_in_french(browser: Browser, lesson_url: str) -> None:
    errors: list[str] = []
    page = opened(browser, lesson_url, errors, locale="fr-FR")
    panel = lesson_tab(page)
    expect(panel.get_by_text(re.compile("^" + re.escape(FR["lesson_no_run"])))).to_be_visible()
    # Before any run, "try this" says in French what to do (Gradio does not translate errors: the server does).
    panel.get_by_role("tabpanel").filter(visible=True).locator(".lesson-try-button").click()
    expect(page.locator(".toast-body")).to_contain_text(FR["lesson_no_run"])
    panel.get_by_role("button", name=FR["lesson_record"]).click()
    expect(panel.locator(".prose.lesson-status")).to_contain_text(FR["lesson_recorded"], timeout=RECORD_TIMEOUT_MS)
    shown = stage_shown(panel, 0, FR)
    expect(shown.locator(".prose.lesson-label")).to_have_text([FR["panel_token_ids"]])
    shown.get_by_role("button", name=FR["lesson_next"]).click()
    shown = stage_shown(panel, 1, FR)
    expect(shown.locator(".prose.lesson-label")).to_have_text([FR["panel_static"], FR["panel_neighbours"]])
    page.screenshot(path=ARTIFACTS / "lesson-fr-02-token_embeddings.png", full_page=True)
    assert errors == []
