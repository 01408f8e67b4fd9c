"""The Lesson tab: a guided walk (Gradio's Walkthrough) through one recorded or replayed run, stage by stage, each
with a short text, one or two panels and a "try this" button that sets up Compare or Explain.

Layout, wiring and the handlers the events call (functions of the tab's `LessonParts`, which `build`'s closures
bind): sdplay/lesson/stages.py holds the stages, presets, drawing and "try this" setups; assets/lesson/lesson.json
the texts, which Gradio's i18n translates in the browser (app.py passes `i18n()` to launch).
"""

from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr
from gradio.i18n import I18nData

from sdplay.explain.capture import ExplainRun, explain
from sdplay.explain.render import ExplainView, replay_view
from sdplay.lesson.stages import (
    EXPLAIN,
    STAGES,
    LessonView,
    Moment,
    Panel,
    Preset,
    Stage,
    ask,
    draw_stage,
    language,
    lesson_view,
    preset_for,
    text,
    translations,
    try_setup,
)
from sdplay.runtime.generate import StepUpdate
from sdplay.runtime.models import ModelManager
from sdplay.runtime.samplers import schedule_names
from sdplay.ui.common import GPU, Controls, run, user_errors, wire_stop
from sdplay.ui.tabs import Page, Tab

QUIET = {"show_progress": "hidden", "api_visibility": "private"}
# Where the "try this" settings go in Compare (A) and Explain, by their `Controls` field names.
SENT = ["prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "seed", "width", "height"]
TARGETS = ("compare", EXPLAIN)  # the tabs a "try this" may fill in, in the order of its outputs
# Photos are sent as JPEG (fast to encode while scrubbing), the drawn diagrams as PNG (sharp lines and text).
PHOTOS = {"noise", "eps", "positions", "heatmap", "eps_pair", "guidance", "filmstrip", "x0", "latent"}
SQUARE = 280  # pixels: the height of a square panel's box


def t(key: str) -> I18nData:
    """A text of assets/lesson/lesson.json, translated in the browser."""
    return I18nData(key)


def i18n() -> gr.I18n:
    """The lesson's translations, for `demo.launch(i18n=...)`."""
    return gr.I18n(**translations())


@dataclass
class Slot:
    """A panel's place on a stage: its label, image and caption (a fallback panel may take it)."""

    label: gr.Markdown
    image: gr.Image
    caption: gr.Markdown


@dataclass
class StageParts:
    note: gr.Markdown  # says when the stage needs the run's model, which is not loaded
    slots: list[Slot]
    attempt: gr.Button

    def components(self) -> list[gr.components.Component]:
        slots = [part for slot in self.slots for part in (slot.label, slot.image, slot.caption)]
        return [self.note, *slots, self.attempt]


@dataclass
class LessonParts:
    """The Lesson tab's components that its events update: the run on screen and the stage shown (states), the
    status line, the step slider, the word, the Walkthrough and each stage's parts (with its "try this" button,
    which `send_tries` wires to Compare and Explain)."""

    lesson: gr.State  # the LessonView on screen
    current: gr.State  # the stage shown (its index)
    status: gr.Markdown
    step: gr.Slider
    word: gr.Radio
    walk: gr.Walkthrough
    stages: list[StageParts]

    def drawn(self) -> list[gr.components.Component]:
        """Every stage's components: what drawing a stage updates."""
        return [component for parts in self.stages for component in parts.components()]

    def outputs(self) -> list[gr.components.Component]:
        """What a new run updates: the run, the status line, the slider, the words and the stages."""
        return [self.lesson, self.status, self.step, self.word, *self.drawn()]


def try_label(stage: Stage) -> I18nData:
    return t("lesson_try_explain") if stage.attempt.field == EXPLAIN else t("lesson_try_compare")


def slot(panel: Panel) -> Slot:
    """A panel: its label above it (Gradio's own floats over the picture), the picture, its caption."""
    label = gr.Markdown(t(f"panel_{panel.name}"), elem_classes="lesson-label")
    image = gr.Image(
        label=t(f"panel_{panel.name}"), show_label=False, format="jpeg" if panel.name in PHOTOS else "png",
        interactive=False, buttons=["fullscreen"], height=None if panel.wide else SQUARE,
        elem_classes=f"lesson-panel lesson-panel-{panel.name}",
    )  # fmt: skip
    caption = gr.Markdown(t(f"panel_{panel.name}_caption"), elem_classes="lesson-caption")
    return Slot(label, image, caption)


def panels_layout(panels: tuple[Panel, ...]) -> list[Slot]:
    """Square panels side by side (in one row, where the first is); a wide one (a chart, a strip) in a row of its
    own, at the column's width. The slots come back in the stage's order of panels."""
    slots: dict[str, Slot] = {}
    squares = [panel for panel in panels if not panel.wide]
    for panel in panels:
        if panel.wide:
            slots[panel.name] = slot(panel)
        elif panel is squares[0]:
            with gr.Row():
                for square in squares:
                    with gr.Column(min_width=200):
                        slots[square.name] = slot(square)
    return [slots[panel.name] for panel in panels]


def stage_layout(index: int, stage: Stage) -> tuple[StageParts, gr.Button | None, gr.Button | None]:
    """One stage: its text and "try this" on the left, its panels on the right, Back and Next below."""
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown(t(f"stage_{stage.id}_text"), elem_classes="lesson-text")
            note = gr.Markdown(elem_classes="lesson-note")
            gr.Markdown(t(f"stage_{stage.id}_try"), elem_classes="lesson-try")
            attempt = gr.Button(try_label(stage), size="sm", elem_classes="lesson-try-button")
        with gr.Column(scale=2, min_width=300):  # the pictures get the room: some are detailed diagrams
            slots = panels_layout(stage.panels)
    with gr.Row(elem_classes="lesson-moves"):
        back = gr.Button(t("lesson_back"), scale=0, min_width=180, elem_classes="lesson-back") if index else None
        last = index + 1 == len(STAGES)
        following = None if last else gr.Button(
            t("lesson_next"), variant="primary", scale=0, min_width=180, elem_classes="lesson-next"
        )  # fmt: skip
    return StageParts(note, slots, attempt), back, following


def walkthrough() -> tuple[gr.Walkthrough, list[StageParts], list[tuple[gr.Button, int]]]:
    """The stages, one Step each: the Walkthrough, each stage's parts, and each Back or Next button with the stage
    it goes to."""
    stages: list[StageParts] = []
    moves: list[tuple[gr.Button, int]] = []
    with gr.Walkthrough(selected=0, elem_classes="lesson-walk") as walk:
        for index, stage in enumerate(STAGES):
            with gr.Step(t(f"stage_{stage.id}_title"), id=index):
                parts, back, following = stage_layout(index, stage)
                stages.append(parts)
                moves += [(button, to) for button, to in ((back, index - 1), (following, index + 1)) if button]
    return walk, stages, moves


def owner(request: gr.Request | None) -> str | None:
    """The session whose Stop may end the lesson's jobs."""
    return request.session_hash if request else None


def missing_note(key: str | None, shown: LessonView) -> str:
    """What a stage lacks, said plainly: the run's model (named), or the embeddings an older file does not hold."""
    if key is None:
        return ""
    return f"{t(key)} **{shown.model}**" if key == "lesson_needs_model" else str(t(key))


# Drawing: only the stage on screen, for the moment the slider and the word say -------------------------------------


def stage_updates(parts: LessonParts, shown: LessonView | None, index: int, at: int, chosen: int | None) -> dict:
    """Stage `index` drawn at step `at` (1-based) for the word `chosen` (an index; else the lesson's own)."""
    if shown is None or not 0 <= index < len(STAGES):
        return {}
    steps = shown.run.steps
    chosen = chosen if chosen is not None and 0 <= chosen < len(shown.view.words) else shown.start.word
    moment = Moment(min(max(int(at), 1), steps) - 1, chosen)
    stage, stage_parts = STAGES[index], parts.stages[index]
    with user_errors():
        picture = draw_stage(stage, shown, moment)
        setup = try_setup(stage, shown)
    updates = {
        stage_parts.note: missing_note(picture.missing, shown),
        stage_parts.attempt: gr.Button(f"{try_label(stage)} · {setup.describe()}"),
    }
    for place, panel, image in zip(stage_parts.slots, picture.panels, picture.images, strict=True):
        updates[place.label] = str(t(f"panel_{panel.name}"))
        updates[place.image] = gr.Image(image, label=str(t(f"panel_{panel.name}")))
        updates[place.caption] = str(t(f"panel_{panel.name}_caption"))
    return updates


def show(parts: LessonParts, shown: LessonView, index: int) -> dict:
    """A new run: the status line, the slider and the words for it, and the stage on screen drawn."""
    steps = shown.run.steps
    start = shown.start
    choices = shown.view.prompt_chips()  # none for an empty prompt: its maps are the start token's
    return {
        parts.lesson: shown,
        parts.status: f"{t('lesson_recorded')} {shown.view.summary()}",
        parts.step: gr.Slider(minimum=1, maximum=max(steps, 2), value=start.step + 1, interactive=steps > 1),
        parts.word: gr.Radio(choices=choices, value=start.word if choices else None),
        **stage_updates(parts, shown, index, start.step + 1, start.word),
    }


def enter(parts: LessonParts, shown: LessonView | None, index: int, at: int, chosen: int | None) -> dict:
    """Show stage `index`, with the step slider where the stage starts (if it says)."""
    start = STAGES[index].step_at(shown.run.steps) if shown is not None else None
    at = at if start is None else start
    return {parts.current: index, parts.step: at, **stage_updates(parts, shown, index, at, chosen)}


def move(parts: LessonParts, target: int, shown: LessonView | None, at: int, chosen: int | None) -> dict:
    """Back or Next: the Walkthrough on stage `target`, entered."""
    return {parts.walk: gr.Walkthrough(selected=target), **enter(parts, shown, target, at, chosen)}


# A run for the lesson: recorded on the loaded model, or replayed from an Explain file ------------------------------


def lesson_of(manager: ModelManager, view: ExplainView, preset: Preset | None) -> LessonView:
    """A recorded or replayed run for the lesson, with what the loaded model adds if it made the run."""
    model = manager.model
    return lesson_view(view, model.name, model.pipe.tokenizer, preset)


def record_lesson(
    page: Page, parts: LessonParts, index: int, request: gr.Request | None, progress: gr.Progress
) -> Iterator[dict]:
    """Record the loaded model's preset as an Explain capture (one executor job, in the GPU queue), then ask the
    model the lesson's questions about it and show stage `index` of it."""
    manager, limits = page.manager, page.limits
    model = manager.model
    preset = preset_for(model.settings.vocabulary)
    with user_errors():
        job = preset.request(model.settings, model.native_size, limits)
    kept: list[ExplainRun] = []

    def recording(item: StepUpdate | ExplainRun) -> dict:
        if isinstance(item, StepUpdate):
            return {parts.status: f"{t('lesson_recording')} {item.step}/{item.total}"}
        kept.append(item)
        return {parts.status: f"{t('lesson_recording')} {item.steps}/{item.steps}"}

    yield from run(manager, job, limits, request, progress, job=explain, show=recording)
    if kept:  # not stopped
        with user_errors():
            lesson = lesson_of(manager, ExplainView(kept[0]), preset)
            yield show(parts, ask(manager, lesson, limits, owner(request)), index)


def replay_lesson(page: Page, parts: LessonParts, path: str | None, index: int, request: gr.Request | None) -> dict:
    """Replay an Explain file (no upload: nothing) for the lesson, and show stage `index` of it."""
    if path is None:
        return {}
    manager, limits = page.manager, page.limits
    with user_errors():
        view = replay_view(path, limits)
        replayed = lesson_of(manager, view, preset_for(manager.model.settings.vocabulary))
        return show(parts, ask(manager, replayed, limits, owner(request)), index)


def build(page: Page) -> None:
    """The Lesson tab: Record, Stop and Replay, the status line, the step and the word, then the stages. Its
    handlers are the functions above; the closures here only bind the tab's parts to them."""
    lesson = gr.State(None)  # the LessonView on screen
    current = gr.State(0)  # the stage shown (its index)
    gr.Markdown(t("lesson_intro"))
    with gr.Row(equal_height=True):
        record = gr.Button(t("lesson_record"), variant="primary", scale=3, elem_classes="lesson-record")
        stop = gr.Button(t("lesson_stop"), variant="stop", scale=1)
        replay = gr.UploadButton(
            t("lesson_replay"), file_types=[".safetensors"], type="filepath", scale=3, elem_classes="lesson-replay"
        )
    status = gr.Markdown(t("lesson_no_run"), elem_classes="lesson-status")
    with gr.Row():
        step = gr.Slider(1, 2, value=1, step=1, label=t("lesson_step"), interactive=False, scale=2)
        word = gr.Radio([], label=t("lesson_word"), scale=3, elem_classes="lesson-words")
    walk, stages, moves = walkthrough()
    parts = LessonParts(lesson, current, status, step, word, walk, stages)

    def record_run(index: int, request: gr.Request = None, progress=gr.Progress()):
        yield from record_lesson(page, parts, index, request, progress)

    recorded = record.click(
        record_run, current, parts.outputs(), show_progress_on=status, api_visibility="private", **GPU
    )
    wire_stop(page.manager, stop, recorded)

    def replay_run(path: str | None, index: int, request: gr.Request = None) -> dict:
        return replay_lesson(page, parts, path, index, request)

    # In the GPU queue, as Explain's replay: drawing a long run keeps the CPU busy.
    replay.upload(
        replay_run, [replay, current], parts.outputs(), show_progress_on=status, api_visibility="private", **GPU
    )

    def draw(shown: LessonView | None, index: int, at: int, chosen: int | None) -> dict:
        return stage_updates(parts, shown, index, at, chosen)

    seen = [lesson, step, word]  # what entering a stage draws: the run, at the slider's step, for the word
    gr.on(
        [step.input, word.input],
        draw,
        [lesson, current, step, word],
        parts.drawn(),
        trigger_mode="always_last",
        **QUIET,
    )
    for button, target in moves:

        def go(shown: LessonView | None, at: int, chosen: int | None, target: int = target) -> dict:
            return move(parts, target, shown, at, chosen)

        button.click(go, seen, [walk, current, step, *parts.drawn()], **QUIET)

    def picked(shown: LessonView | None, at: int, chosen: int | None, event: gr.SelectData) -> dict:
        """A click on a stage already visited, in the Walkthrough's row of stages."""
        return enter(parts, shown, event.index, at, chosen)

    walk.select(picked, seen, [current, step, *parts.drawn()], **QUIET)
    page.when_built(lambda: send_tries(parts, page.part("explain"), page.part("compare"), page.tabs))


# Try this: the stage's comparison set up in Compare, or its prompt in Explain ---------------------------------------


def try_this(stage: Stage, shown: LessonView | None, request: gr.Request) -> list:
    """What `stage`'s "try this" puts in Compare's and Explain's controls (in `TARGETS` order, a skip for the tab it
    does not fill), Compare's "B differs in" and "B's value", and the tab it opens."""
    if shown is None:  # an error's text is not translated by Gradio: ours, in the browser's language
        raise gr.Error(text("lesson_no_run", language(request.headers.get("accept-language"))))
    with user_errors():
        setup = try_setup(stage, shown)
        schedule = gr.Dropdown(choices=schedule_names(str(setup.request.sampler)), value=setup.request.schedule)
    values = []
    for tab in TARGETS:
        filled = tab == setup.tab
        values += [getattr(setup.request, name) if filled else gr.skip() for name in SENT]
        values.append(schedule if filled else gr.skip())
    b = [setup.field, setup.value] if setup.tab == "compare" else [gr.skip(), gr.skip()]
    return [*values, *b, gr.Tabs(selected=setup.tab)]


def send_tries(parts: LessonParts, explained: Controls, compared: Controls, tabs: gr.Tabs) -> None:
    """Each stage's "try this" fills in Compare (A: the lesson's run; B: the stage's one change) or Explain (the
    run's settings with the stage's prompt) and opens that tab. Compare's "B differs in" and "B's value" are
    `compared.differs` and `compared.b_value`."""
    targets = {"compare": compared, EXPLAIN: explained}
    outputs = [getattr(targets[tab], name) for tab in TARGETS for name in [*SENT, "schedule"]]
    outputs += [compared.differs, compared.b_value, tabs]
    for stage, stage_parts in zip(STAGES, parts.stages, strict=True):

        def send(shown: LessonView | None, request: gr.Request, stage: Stage = stage) -> list:
            return try_this(stage, shown, request)

        # Queued (not in the GPU's queue): Gradio shows no error of an event that skips the queue.
        stage_parts.attempt.click(send, parts.lesson, outputs, api_visibility="private")


TAB = Tab("lesson", "Lesson", build)
