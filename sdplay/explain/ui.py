"""The Explain tab: record one generation, then scrub its steps and see where each word of the prompt looks.

Layout and wiring only: `sdplay.explain.capture` records the run and `sdplay.explain.render` draws it. Each panel is
a record of render's `PANELS` registry, laid out where its record says (`PanelLayout.place`): a redraw updates the
panels that change with the step, a new run the rest.
"""

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import gradio as gr
from PIL import Image

from sdplay.explain import presentation
from sdplay.explain.captions import CAPTIONS, Caption, ModelFacts
from sdplay.explain.capture import ExplainRun, explain
from sdplay.explain.decoding import decode_order, decode_x0, decodes_unasked
from sdplay.explain.export import save_run
from sdplay.explain.render import (
    COLORMAPS,
    PANELS,
    PER_WORD,
    RANGE,
    SHARED,
    ExplainView,
    Frame,
    HeatmapSettings,
    Panel,
    content_word,
    export_name,
    heatmap_settings,
    replay_view,
)
from sdplay.runtime.generate import StepUpdate
from sdplay.runtime.images import mask_from_editor
from sdplay.runtime.request import GenerationRequest, Limits, Task
from sdplay.ui.common import GPU, Controls, controls, mask_editor, run, user_errors, wire_stop
from sdplay.ui.tabs import Page, Tab

TASKS = [("Text-to-Image", Task.TXT2IMG.value), ("Image-to-Image", Task.IMG2IMG.value), ("Inpaint", Task.INPAINT.value)]
PANEL_HEIGHT = 230
PLAY_SECONDS = 0.8  # one step per tick: slow enough to read the step label
BUDGET_COLOURS = {"start token": "#9ca3af", "words": "#f97316", "end + padding": "#60a5fa"}
# The places where panels stand side by side, each in a column with these settings (a text panel goes under the
# row). At the tab's other places they stand one under another, their captions after them.
ROWS = {"inside": {"min_width": 180}, "latent": {}}
# Where a panel may stand (`Panel.place`), in the page's order: under the step slider, beside the final image, in
# the row "Inside this step", in the row under the x̂₀ filmstrip, under "Where the words look", and after its charts.
PLACES = ("step", "heatmap", "inside", "latent", "words", "negative")
QUIET = {"show_progress": "hidden", "api_visibility": "private"}


@dataclass
class ExplainControls(Controls):
    """Explain's controls, plus the run on screen and its step: the Inside tab shows its views of that run."""

    view: gr.State | None = field(default=None)  # the ExplainView on screen (None before a run)
    step: gr.Slider | None = field(default=None)  # 1-based
    footer: gr.Column | None = field(default=None)  # the tab's last row: other tabs' buttons that take this run


def panel_caption(text: Caption) -> tuple[gr.Markdown, gr.Markdown]:
    """A panel's short caption, with its longer explanation behind "More"."""
    short = gr.Markdown(text.short, elem_classes="caption")
    with gr.Accordion("More", open=False):
        more = gr.Markdown(text.more)
    return short, more


def image(label: str, format: str = "png", **kwargs) -> gr.Image:
    """An output image panel (Gradio's default, webp, is both slower and blurrier than these)."""
    return gr.Image(label=label, format=format, interactive=False, height=PANEL_HEIGHT, **kwargs)


def gallery(label: str, format: str) -> gr.Gallery:
    """Small multiples at a fixed size, whatever their number (one per UNet block: 4 to 8 of them). The label goes
    above the gallery: Gradio floats it over the gallery's top left corner, onto the first tile."""
    gr.Markdown(f"**{label}**", elem_classes="gallery-label")
    return gr.Gallery(
        label=label, show_label=False, format=format, columns=8, fit_columns=False, height=210, allow_preview=False,
        interactive=False,
    )  # fmt: skip


def panel_component(panel: Panel) -> gr.components.Component:
    """The component that shows `panel`, by its kind."""
    classes = {"elem_classes": list(panel.classes)} if panel.classes else {}
    text = {"value": panel.value} if panel.value is not None else {}
    if panel.kind == "image":
        return image(panel.label, panel.format, **classes)
    if panel.kind == "sheet":
        return gr.Image(label=panel.label, format=panel.format, interactive=False, **classes)
    if panel.kind == "gallery":
        return gallery(panel.label, panel.format)
    if panel.kind == "markdown":
        return gr.Markdown(**text, **classes)
    if panel.kind == "html":
        return gr.HTML(**text, **classes)
    raise ValueError(f"Panel {panel.name!r}: no component shows the kind {panel.kind!r}.")


class PanelLayout:
    """The registry's panels as the tab lays them out: each one's component (and column, for a panel shown only for
    some runs) by name, and every caption on the tab, which each run fills in with its own model's numbers."""

    def __init__(self, facts: ModelFacts) -> None:
        self.facts = facts
        self.placed: list[Panel] = []
        self.components: dict[str, gr.components.Component] = {}
        self.columns: dict[str, gr.Column] = {}
        self.captions: list[tuple[Caption, gr.Markdown, gr.Markdown]] = []

    def caption(self, template: Caption | None) -> None:
        if template is not None:
            self.captions.append((template, *panel_caption(template.filled(self.facts))))

    def place(self, where: str) -> Iterator[Panel]:
        """Lay out the registry's panels for `where`, in its order. Yields each panel while its column is open, for
        what the tab shows under it (x̂₀'s Decode button): iterate to the end."""
        panels = [panel for panel in PANELS if panel.place == where]
        row = ROWS.get(where)
        if row is None:  # one under another, their captions after them
            for panel in panels:
                with self._column(panel):
                    self._add(panel)
                    yield panel
            for panel in panels:
                self.caption(panel.caption)
            return
        texts = [panel for panel in panels if panel.kind in ("markdown", "html")]
        with gr.Row():
            for panel in (panel for panel in panels if panel not in texts):
                with self._column(panel, row):
                    self._add(panel)
                    yield panel
                    self.caption(panel.caption)
        for panel in texts:  # under the row
            self._add(panel)
            yield panel
            self.caption(panel.caption)

    def lay_out(self, where: str) -> None:
        """`place`, with nothing under any panel."""
        for _ in self.place(where):
            pass

    def step_panels(self) -> list[Panel]:
        """The panels laid out that change with the step: what a redraw draws."""
        return [panel for panel in self.placed if not panel.per_run]

    def outputs(self, panels: Sequence[Panel]) -> list[gr.components.Component]:
        return [self.components[panel.name] for panel in panels]

    def _add(self, panel: Panel) -> None:
        self.placed.append(panel)
        self.components[panel.name] = panel_component(panel)

    def _column(self, panel: Panel, row: dict | None = None) -> AbstractContextManager:
        """Where `panel` stands: its column in a row (`row`: the column's settings), or one of its own if it is shown
        only for some runs (hidden until one); else in the place itself."""
        if row is None and panel.only is None:
            return nullcontext()
        column = gr.Column(scale=panel.scale, visible=panel.only is None, **(row or {}))
        if panel.only is not None:
            self.columns[panel.name] = column
        return column


@dataclass
class Form:
    """The settings column: what an Explain press records."""

    controls: Controls
    task: gr.Radio
    editor: gr.ImageMask
    strength: gr.Slider
    start: gr.Button
    stop: gr.Button
    summary: gr.Markdown

    def named(self) -> dict[str, gr.components.Component]:
        """The Explain press's keyword inputs."""
        c = self.controls
        chosen = {"task": self.task, "image": self.editor, "strength": self.strength}
        return c.named() | c.named("width", "height") | chosen | c.named("schedule")


@dataclass
class Scrubbing(presentation.Followed):
    """What a redraw reads: the run on screen, its step, the chosen word and how word maps are drawn (presentation
    mode follows these too); and Play."""

    step_mode: gr.Radio
    first: gr.Slider
    last: gr.Slider
    play: gr.Button
    timer: gr.Timer

    def named(self) -> dict[str, gr.components.Component]:
        """The redraw's keyword inputs."""
        return {
            "view": self.view, "step": self.step, "word": self.chips, "colormap": self.colormap,
            "opacity": self.opacity, "scale": self.normalisation, "mode": self.step_mode, "first": self.first,
            "last": self.last,
        }  # fmt: skip

    def triggers(self) -> list:
        """What redraws the step's panels."""
        changed = [self.step, self.chips, self.colormap, self.normalisation, self.step_mode]
        return [part.change for part in changed] + [self.opacity.release, self.first.release, self.last.release]


@dataclass
class RunParts:
    """What shows a run as a whole: set once for each run on screen (`show_run`), with the panels drawn once a run,
    the columns of those shown only for some runs, and the captions that state the model's numbers."""

    view: gr.State
    final: gr.Image
    summary: gr.Markdown
    step: gr.Slider
    first: gr.Slider
    last: gr.Slider
    chips: gr.Radio
    token_info: gr.Markdown
    subwords: gr.Markdown
    mass: gr.Image
    concentration: gr.Image
    budget: gr.BarPlot
    export: gr.File
    layout: PanelLayout

    def outputs(self) -> list[gr.components.Component]:
        fixed = [getattr(self, part.name) for part in fields(self) if part.name != "layout"]
        layout = self.layout
        once = layout.outputs([panel for panel in layout.placed if panel.per_run])
        stated = [part for template, *shown in layout.captions if template.per_model for part in shown]
        return fixed + once + list(layout.columns.values()) + stated


def step_index(value: int, steps: int) -> int:
    """A 1-based slider value as a 0-based step, clamped: a slider keeps its old bounds until the next run."""
    return min(max(int(value), 1), steps) - 1


def step_sliders(steps: int) -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    """The step scrubber and the From/To sliders for a run of `steps`, at its last step. A one-step run (SD-Turbo's
    normal use) has nothing to scrub, and Gradio refuses a slider from 1 to 1: they are hidden at step 1."""
    scrubbing = steps > 1
    top = max(steps, 2)
    return (
        gr.Slider(minimum=1, maximum=top, value=steps, interactive=scrubbing, visible=scrubbing),
        gr.Slider(minimum=1, maximum=top, value=1, visible=scrubbing),
        gr.Slider(minimum=1, maximum=top, value=steps, visible=scrubbing),
    )


def exported(folder: str, run: ExplainRun) -> str:
    """Write the run's export into `folder`. The caller is a generator holding the folder open: Gradio copies an
    output file into its cache before it resumes the generator, which then deletes the folder."""
    return str(save_run(run, Path(folder) / export_name(run.recipe)))


def api_results(folder: str, item: StepUpdate | ExplainRun) -> tuple:
    """/explain's results: the final image and the export file (nothing while steps run)."""
    if isinstance(item, StepUpdate):
        return gr.skip(), gr.skip()
    return Image.fromarray(item.image), exported(folder, item)


# Handlers -------------------------------------------------------------------------------------------------------


def show_run(parts: RunParts, shown: ExplainView) -> dict:
    """Everything that is fixed for a run; `redraw` then draws its last step."""
    steps, layout = shown.run.steps, parts.layout
    word = content_word(shown.words)
    stated = {}
    for template, short, more in layout.captions:
        if template.per_model:  # the run's model, which need not be the one loaded now
            text = template.filled(shown.facts)
            stated |= {short: text.short, more: text.more}
    frame = Frame(shown, steps - 1, HeatmapSettings(word=word))
    once = {layout.components[panel.name]: panel.draw(frame) for panel in layout.placed if panel.per_run}
    only = {panel.name: panel.only for panel in layout.placed if panel.only is not None}
    columns = {column: gr.Column(visible=only[name](shown)) for name, column in layout.columns.items()}
    return {
        **stated, **once, **columns,
        parts.view: shown,
        parts.final: shown.image,
        parts.summary: shown.summary(),
        **dict(zip((parts.step, parts.first, parts.last), step_sliders(steps), strict=True)),
        parts.chips: gr.Radio(choices=shown.chips(), value=word),
        parts.token_info: shown.token_summary(),
        parts.subwords: shown.subword_table(),
        parts.mass: shown.timeline_chart("mass", word),
        parts.concentration: shown.timeline_chart("concentration", word),
        # Steps as categories: numeric x makes hairline bars.
        parts.budget: gr.BarPlot(shown.budget.astype({"step": str}), sort=[str(s) for s in range(1, steps + 1)]),
    }  # fmt: skip


def redraw(
    panels: Sequence[Panel], *, view: ExplainView | None, step: int, word: int | None, colormap: str,
    opacity: float, scale: str, mode: str, first: int, last: int,
) -> list:  # fmt: skip
    """`panels` (those that change with the step) drawn at the tab's step, word and heatmap settings."""
    if view is None:
        return [gr.skip()] * len(panels)
    steps = view.run.steps
    word = word if word is not None and 0 <= word < len(view.words) else 0
    span = tuple(sorted((step_index(first, steps), step_index(last, steps)))) if mode == RANGE else None
    drawn = view.draw(step_index(step, steps), heatmap_settings(word, colormap, opacity, scale, span), panels)
    return [drawn[panel.name] for panel in panels]


def timelines(shown: ExplainView | None, word: int | None):
    """The timeline charts with the chosen word highlighted (they do not depend on the step)."""
    if shown is None or word is None or not 0 <= word < len(shown.words):
        return gr.skip(), gr.skip()
    return shown.timeline_chart("mass", word), shown.timeline_chart("concentration", word)


def decoding(page: Page, shown: ExplainView | None, at: int, request: gr.Request, progress: gr.Progress):
    """Decode x̂₀ with the model's VAE, at most `MAX_DECODED` steps, as this session's job on the executor: its
    Stop ends the decoding between steps. The view keeps the decoded steps, so scrubbing stays instant."""
    if shown is None:
        raise gr.Error("Explain a prompt first.")
    steps, first = shown.run.steps, step_index(at, shown.run.steps)
    wanted, done = len(decode_order(steps, first)), 0
    with user_errors():
        progress((0, wanted), desc="Decoding x̂₀")
        for decoded in decode_x0(page.manager, shown, first, page.limits, request.session_hash):
            done += 1
            progress((done, wanted), desc="Decoding x̂₀")
            # A yield per step: where Gradio can cancel the job (on ZeroGPU, Stop cancels it).
            yield shown.x0(first) if decoded == first else gr.skip()
    if done < wanted:
        gr.Info(f"Stopped: x̂₀ decoded at {done} of {wanted} steps.")
    elif wanted < steps:
        gr.Info(f"x̂₀ decoded at {done} of the {steps} steps, spread over the run; the others keep the preview.")


def decoding_if_cheap(page: Page, shown: ExplainView | None, at: int, request: gr.Request, progress: gr.Progress):
    """After a run, decode x̂₀ unasked where that is cheap (`decodes_unasked`)."""
    if shown is not None and decodes_unasked(page.manager, shown.run):
        yield from decoding(page, shown, at, request, progress)
    else:
        yield gr.skip()  # a generator that yields nothing would empty x̂₀


def explain_request(task: str, image: dict | None, **settings) -> GenerationRequest:
    """What an Explain press records: the editor's picture for the image tasks, and its painted mask for Inpaint."""
    with user_errors():
        background = image.get("background") if image else None
        painted = mask_from_editor(image) if task == Task.INPAINT and background is not None else None
    return GenerationRequest(task=Task(task), image=background, mask=painted, **settings)


def explained(page: Page, job: GenerationRequest, session: gr.Request | None, progress: gr.Progress, show: Callable):
    """Record `job` as the session's job, streaming `show(folder, item)`: `folder` holds the run's export for as
    long as the event lasts (see `exported`)."""
    with tempfile.TemporaryDirectory(prefix="sdplay-explain-") as folder:
        yield from run(page.manager, job, page.limits, session, progress, job=explain, show=partial(show, folder))


def show_step(parts: RunParts, folder: str, item: StepUpdate | ExplainRun) -> dict:
    """A step's preview while recording, then the whole run and its export."""
    if isinstance(item, StepUpdate):
        doing = "Stopped at" if item.stopped else "Recording…"
        shown = parts.layout.components
        return {shown["x0"]: item.previews[0], shown["label"]: f"{doing} step {item.step} of {item.total}"}
    return {**show_run(parts, ExplainView(item)), parts.export: exported(folder, item)}


def replay_run(parts: RunParts, limits: Limits, path: str | None) -> dict:
    """A saved run, shown as a recorded one is."""
    if path is None:
        return {}
    with user_errors():
        return {**show_run(parts, replay_view(path, limits)), parts.export: path}


def show_task(chosen: str):
    needs_image = chosen != Task.TXT2IMG
    return gr.ImageMask(visible=needs_image), gr.Slider(visible=needs_image)


# Layout ---------------------------------------------------------------------------------------------------------


def settings_form(page: Page) -> Form:
    task = gr.Radio(TASKS, value=Task.TXT2IMG.value, label="Task")
    editor = mask_editor("Image (for Inpaint, paint over what to repaint)", 300, visible=False)
    strength = gr.Slider(0.01, 1, value=0.75, step=0.01, label="Denoising strength", visible=False)
    c = controls(page.manager, page.limits, batch=False, prefilled=True)  # a first press shows words at work
    with gr.Row():
        start = gr.Button("Explain", variant="primary", elem_classes="explain")
        stop = gr.Button("Stop", variant="stop")
    return Form(c, task, editor, strength, start, stop, gr.Markdown())


def scrubber(view: gr.State, layout: PanelLayout) -> tuple[Scrubbing, gr.Image, gr.Markdown, gr.Markdown]:
    """The step scrubber and Play, the final image beside the word's map, the words and how maps are drawn."""
    with gr.Row():
        step = gr.Slider(1, 2, value=1, step=1, label="Step", interactive=False, scale=5, elem_classes="step")
        with gr.Column(scale=0, min_width=110):
            play = gr.Button("▶ Play")
        timer = gr.Timer(PLAY_SECONDS, active=False)
    layout.lay_out("step")
    with gr.Row():
        with gr.Column():
            final = image("Final image")
            layout.caption(CAPTIONS["final"])
        with gr.Column():
            layout.lay_out("heatmap")
    chips = gr.Radio([], label="Words of the prompt", elem_classes="chips")
    token_info = gr.Markdown()
    with gr.Accordion("Subwords: how the tokenizer split each word", open=False):
        subwords = gr.Markdown()
    layout.caption(CAPTIONS["tokens"])
    with gr.Row():
        colormap = gr.Dropdown(list(COLORMAPS), value="viridis", label="Colour map", min_width=120)
        opacity = gr.Slider(0, 1, value=0.6, step=0.05, label="Opacity")
        normalisation = gr.Radio([PER_WORD, SHARED], value=PER_WORD, label="Scale")
    with gr.Row():
        step_mode = gr.Radio(["This step", RANGE], value="This step", label="Steps")
        first = gr.Slider(1, 2, value=1, step=1, label="From step")
        last = gr.Slider(1, 2, value=2, step=1, label="To step")
    scrubbing = Scrubbing(view, step, chips, colormap, opacity, normalisation, step_mode, first, last, play, timer)
    return scrubbing, final, token_info, subwords


def inside_this_step(layout: PanelLayout) -> gr.Button:
    """The step's own panels; returns x̂₀'s Decode button."""
    gr.Markdown("## Inside this step")
    decode = None
    for panel in layout.place("inside"):
        if panel.name == "x0":
            decode = gr.Button("Decode x̂₀ of every step with the VAE", size="sm")
    return decode


def where_the_words_look(layout: PanelLayout) -> tuple[gr.Image, gr.Image, gr.BarPlot]:
    """The word maps' panels and the run's attention charts."""
    gr.Markdown("## Where the words look")
    layout.lay_out("words")
    with gr.Row(elem_classes="timeline"):
        mass = gr.Image(label="Attention mass", show_label=False, format="png", interactive=False)
        concentration = gr.Image(label="Concentration", show_label=False, format="png", interactive=False)
    layout.caption(CAPTIONS["timeline"])
    budget = gr.BarPlot(
        x="step", y="share", color="part", title="Attention budget", height=260, y_lim=[0, 1], color_map=BUDGET_COLOURS
    )
    layout.caption(CAPTIONS["budget"])
    layout.lay_out("negative")
    return mass, concentration, budget


def save_and_replay(layout: PanelLayout) -> tuple[gr.File, gr.File]:
    gr.Markdown("## Save and replay")
    with gr.Row():
        export = gr.File(label="Download this run (.safetensors)", interactive=False)
        upload = gr.File(label="Replay a saved run", file_types=[".safetensors"], type="filepath")
    layout.caption(CAPTIONS["export"])
    return export, upload


# Wiring ---------------------------------------------------------------------------------------------------------


def wire_drawing(scrub: Scrubbing, parts: RunParts) -> dict:
    """The step's panels follow the step, the word and the map settings; the timelines follow the word; Play steps.
    Returns the redraw, which a new run triggers too."""
    panels = parts.layout.step_panels()
    outputs = parts.layout.outputs(panels)
    redraw_event = dict(fn=partial(redraw, panels), inputs_kwargs=scrub.named(), outputs=outputs, **QUIET)
    gr.on(scrub.triggers(), **redraw_event)
    scrub.chips.change(timelines, [scrub.view, scrub.chips], [parts.mass, parts.concentration], **QUIET)
    scrub.play.click(presentation.play_or_pause, scrub.play, [scrub.timer, scrub.play], api_visibility="private")
    scrub.timer.tick(presentation.next_step, [scrub.view, scrub.step], scrub.step, **QUIET)
    return redraw_event


def wire_recording(page: Page, form: Form, parts: RunParts, decode: gr.Button, redraw_event: dict) -> tuple:
    """Explain records a run, draws it, and decodes its x̂₀ where that is cheap; Decode decodes x̂₀ on demand; Stop
    ends any of them. Returns the two decodings."""

    def record(request: gr.Request = None, progress=gr.Progress(), *, task: str, image: dict | None, **settings):
        job = explain_request(task, image, **settings)
        yield from explained(page, job, request, progress, partial(show_step, parts))

    def decode_all(shown: ExplainView | None, at: int, request: gr.Request, progress=gr.Progress()):
        yield from decoding(page, shown, at, request, progress)

    def decode_if_cheap(shown: ExplainView | None, at: int, request: gr.Request, progress=gr.Progress()):
        yield from decoding_if_cheap(page, shown, at, request, progress)

    x0, label = parts.layout.components["x0"], parts.layout.components["label"]
    shows = {"show_progress_on": label, "api_visibility": "private"}
    recorded = form.start.click(
        record, inputs_kwargs=form.named(), outputs=[*parts.outputs(), x0, label], **shows, **GPU
    )
    recorded.then(**redraw_event)
    unasked = recorded.success(decode_if_cheap, [parts.view, parts.step], x0, **QUIET, **GPU)
    decoded = decode.click(decode_all, [parts.view, parts.step], x0, api_visibility="private", **GPU)
    for event in (recorded, decoded, unasked):
        wire_stop(page.manager, form.stop, event)
    form.task.change(show_task, form.task, [form.editor, form.strength], api_visibility="private", queue=False)
    return decoded, unasked


def build(page: Page) -> None:
    unplaced = [f"{panel.name} ({panel.place})" for panel in PANELS if panel.place not in PLACES]
    if unplaced:
        raise ValueError(f"The Explain tab has no place for these panels: {', '.join(unplaced)}; see PLACES.")
    layout = PanelLayout(ModelFacts.of_pipeline(page.manager.model.pipe))  # each run then states its own model's
    view = gr.State(None)  # the ExplainView of the run on screen
    overview = CAPTIONS["overview"].filled(layout.facts)
    gr.Markdown(overview.short)
    with gr.Accordion("How does Stable Diffusion make an image?", open=False):
        gr.Markdown(overview.more)
    presenting = presentation.toggle()
    with gr.Row():  # settings on the left; the scrubber, the image and the word maps on the right
        with gr.Column(scale=1, min_width=320):
            form = settings_form(page)
        with gr.Column(scale=2):
            scrub, final, token_info, subwords = scrubber(view, layout)
    decode = inside_this_step(layout)
    redraw_strip = presentation.filmstrip_panel(view, scrub.step, final)
    layout.lay_out("latent")
    mass, concentration, budget = where_the_words_look(layout)
    export, upload = save_and_replay(layout)
    parts = RunParts(
        view, final, form.summary, scrub.step, scrub.first, scrub.last, scrub.chips, token_info, subwords, mass,
        concentration, budget, export, layout,
    )  # fmt: skip

    redraw_event = wire_drawing(scrub, parts)
    for event in wire_recording(page, form, parts, decode, redraw_event):
        event.then(**redraw_strip)  # its frames are x̂₀s: now the decoded ones
    # In the GPU queue: drawing a long run keeps the CPU busy, and a generation waits less than it would share.

    def replay(path: str | None) -> dict:  # its name names the (private) event, which scripts call as "replay"
        return replay_run(parts, page.limits, path)

    upload.upload(replay, upload, parts.outputs(), api_visibility="private", **GPU).then(**redraw_event)
    presentation.build(presenting, scrub)

    def explain_api(request: gr.Request = None, progress=gr.Progress(), **settings):
        """Explain a text-to-image run: returns the final image and the whole run as a .safetensors file."""
        yield from explained(page, GenerationRequest(task=Task.TXT2IMG, **settings), request, progress, api_results)

    c = form.controls
    api = c.named() | c.named("width", "height", "schedule")
    gr.on([], explain_api, inputs_kwargs=api, outputs=[final, export], api_name="explain", **GPU)
    explained_controls = ExplainControls(
        **{part.name: getattr(c, part.name) for part in fields(c)}, view=view, step=scrub.step, footer=gr.Column()
    )
    page.offer(TAB.id, explained_controls)
    page.follow_model(explained_controls)


TAB = Tab("explain", "Explain", build)
