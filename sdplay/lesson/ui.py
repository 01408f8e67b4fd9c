"""The Lesson tab: a guided walk (Gradio's Walkthrough) through one recorded or replayed run, stage by stage, each
with a short text, one or two panels and a "try this" button that sets up Compare or Explain.

Layout and wiring only: sdplay/lesson/stages.py holds the stages, presets and drawing;
assets/lesson/lesson.json the texts, which Gradio's i18n translates in the browser (app.py passes `i18n()` to launch).
"""

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
from sdplay.runtime.samplers import schedule_names
from sdplay.ui.common import GPU, Controls, run, user_errors, wire_stop
from sdplay.ui.tabs import Page, Tab

QUIET = {"show_progress": "hidden", "api_visibility": "private"}
# Where the "try this" settings go in Compare (A) and Explain, by their `Controls` field names.
SENT = ["prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "seed", "width", "height"]
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
    """What layout.py wires to the other tabs: each stage's "try this" button, and the lesson's run."""

    lesson: gr.State
    stages: list[StageParts]


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


def owner(request: gr.Request | None) -> str | None:
    """The session whose Stop may end the lesson's jobs."""
    return request.session_hash if request else None


def missing_note(key: str | None, shown: LessonView) -> str:
    """What a stage lacks, said plainly: the run's model (named), or the embeddings an older file does not hold."""
    if key is None:
        return ""
    return f"{t(key)} **{shown.model}**" if key == "lesson_needs_model" else str(t(key))


def build(page: Page) -> None:
    manager, limits = page.manager, page.limits
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
    stages: list[StageParts] = []
    moves: list[tuple[gr.Button, int]] = []  # (button, the stage it goes to)
    with gr.Walkthrough(selected=0, elem_classes="lesson-walk") as walk:
        for index, stage in enumerate(STAGES):
            with gr.Step(t(f"stage_{stage.id}_title"), id=index):
                parts, back, following = stage_layout(index, stage)
                stages.append(parts)
                moves += [(button, to) for button, to in ((back, index - 1), (following, index + 1)) if button]
    drawn = [component for parts in stages for component in parts.components()]

    # Drawing: only the stage on screen, for the moment the slider and the word say ---------------------------

    def draw(shown: LessonView | None, index: int, at: int, chosen: int | None) -> dict:
        if shown is None or not 0 <= index < len(STAGES):
            return {}
        steps = shown.run.steps
        chosen = chosen if chosen is not None and 0 <= chosen < len(shown.view.words) else shown.start.word
        moment = Moment(min(max(int(at), 1), steps) - 1, chosen)
        stage, parts = STAGES[index], stages[index]
        with user_errors():
            picture = draw_stage(stage, shown, moment)
            setup = try_setup(stage, shown)
        updates = {
            parts.note: missing_note(picture.missing, shown),
            parts.attempt: gr.Button(f"{try_label(stage)} · {setup.describe()}"),
        }
        for place, panel, image in zip(parts.slots, picture.panels, picture.images, strict=True):
            updates[place.label] = str(t(f"panel_{panel.name}"))
            updates[place.image] = gr.Image(image, label=str(t(f"panel_{panel.name}")))
            updates[place.caption] = str(t(f"panel_{panel.name}_caption"))
        return updates

    def show(shown: LessonView, index: int) -> dict:
        """A new run: the status line, the slider and the words for it, and the stage on screen drawn."""
        steps = shown.run.steps
        start = shown.start
        choices = shown.view.prompt_chips()  # none for an empty prompt: its maps are the start token's
        return {
            lesson: shown,
            status: f"{t('lesson_recorded')} {shown.view.summary()}",
            step: gr.Slider(minimum=1, maximum=max(steps, 2), value=start.step + 1, interactive=steps > 1),
            word: gr.Radio(choices=choices, value=start.word if choices else None),
            **draw(shown, index, start.step + 1, start.word),
        }

    outputs = [lesson, status, step, word, *drawn]

    def loaded(view: ExplainView, preset: Preset | None) -> LessonView:
        model = manager.model
        return lesson_view(view, model.name, model.pipe.tokenizer, preset)

    def record_run(index: int, request: gr.Request = None, progress=gr.Progress()):
        """Record the loaded model's preset as an Explain capture (one executor job, in the GPU queue), then ask
        the model the lesson's questions about it."""
        model = manager.model
        preset = preset_for(model.settings.vocabulary)
        with user_errors():
            job = preset.request(model.settings, model.native_size, limits)
        kept: list[ExplainRun] = []

        def shown(item: StepUpdate | ExplainRun) -> dict:
            if isinstance(item, StepUpdate):
                return {status: f"{t('lesson_recording')} {item.step}/{item.total}"}
            kept.append(item)
            return {status: f"{t('lesson_recording')} {item.steps}/{item.steps}"}

        yield from run(manager, job, limits, request, progress, job=explain, show=shown)
        if kept:  # not stopped
            with user_errors():
                lesson_run = loaded(ExplainView(kept[0]), preset)
                yield show(ask(manager, lesson_run, limits, owner(request)), index)

    recorded = record.click(record_run, current, outputs, show_progress_on=status, api_visibility="private", **GPU)
    wire_stop(manager, stop, recorded)

    def replay_run(path: str | None, index: int, request: gr.Request = None) -> dict:
        if path is None:
            return {}
        with user_errors():
            view = replay_view(path, limits)
            replayed = loaded(view, preset_for(manager.model.settings.vocabulary))
            return show(ask(manager, replayed, limits, owner(request)), index)

    # In the GPU queue, as Explain's replay: drawing a long run keeps the CPU busy.
    replay.upload(replay_run, [replay, current], outputs, show_progress_on=status, api_visibility="private", **GPU)

    redraw = dict(fn=draw, inputs=[lesson, current, step, word], outputs=drawn, **QUIET)
    gr.on([step.input, word.input], **redraw, trigger_mode="always_last")

    def enter(shown: LessonView | None, index: int, at: int, chosen: int | None) -> dict:
        """Show stage `index`, with the step slider where the stage starts (if it says)."""
        start = STAGES[index].step_at(shown.run.steps) if shown is not None else None
        at = at if start is None else start
        return {current: index, step: at, **draw(shown, index, at, chosen)}

    for button, target in moves:

        def go(shown: LessonView | None, at: int, chosen: int | None, target: int = target) -> dict:
            return {walk: gr.Walkthrough(selected=target), **enter(shown, target, at, chosen)}

        button.click(go, [lesson, step, word], [walk, current, step, *drawn], **QUIET)

    def picked(shown: LessonView | None, at: int, chosen: int | None, event: gr.SelectData) -> dict:
        """A click on a stage already visited, in the Walkthrough's row of stages."""
        return enter(shown, event.index, at, chosen)

    walk.select(picked, [lesson, step, word], [current, step, *drawn], **QUIET)
    parts = LessonParts(lesson, stages)
    page.when_built(lambda: send_tries(parts, page.part("explain"), page.part("compare"), page.tabs))


def send_tries(parts: LessonParts, explained: Controls, compared: Controls, tabs: gr.Tabs) -> None:
    """Each stage's "try this" fills in Compare (A: the lesson's run; B: the stage's one change) or Explain (the
    run's settings with the stage's prompt) and opens that tab. Compare's "B differs in" and "B's value" are
    `compared.differs` and `compared.b_value`."""
    targets = {"compare": compared, EXPLAIN: explained}
    outputs = [getattr(c, name) for c in targets.values() for name in [*SENT, "schedule"]]
    outputs += [compared.differs, compared.b_value, tabs]

    for index, stage_parts in enumerate(parts.stages):

        def send(shown: LessonView | None, request: gr.Request, stage: Stage = STAGES[index]) -> list:
            if shown is None:  # an error's text is not translated by Gradio: ours, in the browser's language
                raise gr.Error(text("lesson_no_run", language(request.headers.get("accept-language"))))
            with user_errors():
                setup = try_setup(stage, shown)
                schedule = gr.Dropdown(
                    choices=schedule_names(str(setup.settings["sampler"])), value=setup.settings["schedule"]
                )
            values = []
            for tab in targets:
                filled = tab == setup.tab
                values += [setup.settings[name] if filled else gr.skip() for name in SENT]
                values.append(schedule if filled else gr.skip())
            b = [setup.field, setup.value] if setup.tab == "compare" else [gr.skip(), gr.skip()]
            return [*values, *b, gr.Tabs(selected=setup.tab)]

        # Queued (not in the GPU's queue): Gradio shows no error of an event that skips the queue.
        stage_parts.attempt.click(send, parts.lesson, outputs, api_visibility="private")


TAB = Tab("lesson", "Lesson", build)
