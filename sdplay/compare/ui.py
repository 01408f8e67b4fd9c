"""The Compare tab: run A and B (same seed, one field changed) as two Explain captures and show what differs, in the
image and inside; and "what if this word weren't there": A against A with one word removed or reweighted.

`build` lays out the tab and wires each event beside its components; the handlers are the module's functions
(`compare_on_page`, `ablate_on_page`, `compare_for_api`, `ablate_for_api`, ...), which take the settings by keyword
as the events pass them (`inputs_kwargs`). sdplay/compare/comparison.py builds B and measures the two runs.
"""

from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from functools import partial

import gradio as gr
import pandas as pd

from sdplay.compare.comparison import (
    ABLATIONS,
    FIELDS,
    SD_CONTRASTS,
    SHAPES_CONTRASTS,
    Comparison,
    Contrast,
    ablate,
    ablation_label,
    pair_labels,
    presets_for,
    prompt_words,
    variant,
    with_seed,
)
from sdplay.explain.capture import ExplainRun, explain
from sdplay.explain.decoding import decode_x0_if_cheap
from sdplay.explain.render import content_word
from sdplay.runtime.generate import StepUpdate
from sdplay.runtime.models import LoadedModel, ModelManager
from sdplay.runtime.request import GenerationRequest, Limits, Task, validated
from sdplay.runtime.samplers import schedule_names
from sdplay.ui.common import GPU, Controls, controls, run, user_errors, wire_stop
from sdplay.ui.tabs import Page, Tab

PANEL_HEIGHT = 260
PRESETS = {
    f"{group}: {pair.name}": pair
    for group, pairs in (("Shapes", SHAPES_CONTRASTS), ("SD", SD_CONTRASTS))
    for pair in pairs
}
# A's settings, named like GenerationRequest's fields: the /compare and /ablate APIs' first parameters, in this order.
A_SETTINGS = ("prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "seed", "width", "height", "schedule")
Show = Callable[[str, StepUpdate | None], dict | tuple]  # (run's label, its step; None: the run is done) → outputs


@dataclass
class CompareControls(Controls):
    """The shared controls (A's settings) plus the preset pairs, which follow the loaded model like its examples."""

    presets: gr.Dropdown | None = field(default=None)
    differs: gr.Dropdown | None = field(default=None)  # "B differs in": the Lesson's "try this" fills it in
    b_value: gr.Textbox | None = field(default=None)

    def model_dependent(self) -> list[gr.components.Component]:
        return [*super().model_dependent(), self.presets]

    def recommended(self, model: LoadedModel) -> dict[gr.components.Component, object]:
        return {**super().recommended(model), self.presets: gr.Dropdown(choices=preset_names(model), value=None)}


@dataclass(frozen=True)
class Recorded:
    """A's request (with its seed drawn) and its run: an ablation of the same A reuses it instead of running A
    again."""

    request: GenerationRequest
    run: ExplainRun

    def matches(self, request: GenerationRequest) -> bool:
        """Whether `request` is this A (a random seed, -1, matches the seed it was given)."""
        return (replace(request, seed=self.request.seed) if request.seed == -1 else request) == self.request


@dataclass
class ABView:
    """What a comparison shows: A | B, their difference, x̂₀ and a word's attention at a step, and the states it
    keeps (the Comparison on screen; the last A, which an ablation of the same A reuses)."""

    comparison: gr.State
    last_a: gr.State
    slider: gr.ImageSlider
    difference: gr.Image
    status: gr.Markdown
    step: gr.Slider
    word: gr.Dropdown
    x0_a: gr.Image
    x0_b: gr.Image
    heat_a: gr.Image
    heat_b: gr.Image
    split: gr.LinePlot
    summary: gr.JSON

    def drawn(self) -> list[gr.Image]:
        """What `draw` updates."""
        return [self.x0_a, self.x0_b, self.heat_a, self.heat_b]

    def outputs(self) -> list[gr.components.Component]:
        shown = [self.comparison, self.last_a, self.slider, self.difference, self.status, self.step, self.word]
        return [*shown, *self.drawn(), self.split, self.summary]


@dataclass
class AblationView:
    """What an ablation shows: A | ablated, their difference, how each word's attention moved; and the last A."""

    slider: gr.ImageSlider
    difference: gr.Image
    status: gr.Markdown
    shifts: gr.BarPlot
    table: gr.Dataframe
    changes: gr.Gallery
    summary: gr.JSON
    last_a: gr.State

    def outputs(self) -> list[gr.components.Component]:
        return [
            self.slider,
            self.difference,
            self.status,
            self.shifts,
            self.table,
            self.changes,
            self.summary,
            self.last_a,
        ]


@dataclass(frozen=True)
class Recorder:
    """Records runs for one event: the page's model manager and limits, the caller's session and progress bar."""

    manager: ModelManager
    limits: Limits
    session: gr.Request | None
    progress: gr.Progress

    @property
    def owner(self) -> str | None:
        return self.session.session_hash if self.session else None

    def record(self, jobs: list[tuple[str, GenerationRequest]], show: Show) -> Generator[dict | tuple, None, list]:
        """Record each (label, request) as an Explain capture, one executor job each, in the GPU queue's one slot;
        `show(label, update)` turns a step (None: a finished run) into the event's outputs. Returns the runs (a list
        of ExplainRun): fewer than the jobs when Stop ended one (the page has then been told where)."""
        runs: list[ExplainRun] = []
        for label, job in jobs:
            recorded = len(runs)

            def shown(item: StepUpdate | ExplainRun, label: str = label) -> dict | tuple:
                if isinstance(item, ExplainRun):
                    runs.append(item)
                    return show(label, None)
                return show(label, item)

            yield from run(self.manager, job, self.limits, self.session, self.progress, job=explain, show=shown)
            if len(runs) == recorded:
                break
        return runs


def send_settings(button: gr.Button, source: Controls, target: Controls, tabs: gr.Tabs) -> None:
    """`button` (in another tab: Explain) copies that tab's prompt and settings into Compare's A and opens Compare,
    where B and the ablation are a click away."""
    outputs = [*target.named(*A_SETTINGS).values(), tabs]
    button.click(
        sent_settings, inputs_kwargs=source.named(*A_SETTINGS), outputs=outputs, queue=False, api_visibility="private"
    )


def sent_settings(**settings) -> tuple:
    """The settings sent as Compare's A (the schedule among its sampler's types), in `A_SETTINGS` order, and the
    Compare tab opened."""
    with user_errors():
        offered = schedule_names(settings["sampler"])
    settings["schedule"] = gr.Dropdown(choices=offered, value=settings["schedule"])
    return *(settings[name] for name in A_SETTINGS), gr.Tabs(selected="compare")


def preset_names(model: LoadedModel) -> list[str]:
    fitting = presets_for(model.settings.vocabulary)
    return [name for name, pair in PRESETS.items() if pair in fitting]


def preset_pair(name: str | None) -> tuple:
    """A preset's prompt, what B differs in, B's value and (where B changes the CFG scale) A's CFG scale."""
    pair: Contrast | None = PRESETS.get(name or "")
    if pair is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    label = next(label for label, value in FIELDS.items() if value == pair.field)
    guidance = float(pair.a_value) if pair.field == "guidance_scale" and pair.a_value else gr.skip()
    return pair.prompt, label, pair.value, guidance


def prompt_word_choices(prompt: str | None) -> gr.Dropdown:
    """The words of A's prompt to ablate, numbered (a word can repeat), the first chosen."""
    words = [match.group() for match in prompt_words(prompt or "")]
    return gr.Dropdown(choices=[(f"{w} ({i + 1})", i) for i, w in enumerate(words)], value=0 if words else None)


def a_request(limits: Limits, **settings) -> GenerationRequest:
    """A: a text-to-image request with `A_SETTINGS`, validated."""
    return validated(GenerationRequest(task=Task.TXT2IMG, **settings), limits)


def ab_requests(
    limits: Limits, *, differs_in: str, b_value: str, **settings
) -> tuple[GenerationRequest, GenerationRequest, tuple[str, str]]:
    """A (its seed drawn) and B, A with `differs_in` (a label of FIELDS, or a field's name) set to `b_value`, and
    the labels that say how they differ."""
    a = with_seed(a_request(limits, **settings))
    field_name = FIELDS.get(differs_in, differs_in)
    b = variant(a, field_name, b_value, limits)
    return a, b, pair_labels(a, b, field_name)


def step_slider(steps: int) -> gr.Slider:
    """The step scrubber at the last step; a one-step run has nothing to scrub (and Gradio refuses 1 to 1)."""
    return gr.Slider(minimum=1, maximum=max(steps, 2), value=steps, interactive=steps > 1)


def difference_plot(pair: Comparison) -> pd.DataFrame:
    steps = list(range(1, pair.a.steps + 1))
    series = {"x̂₀ (the prediction)": pair.differences, "x_t (the path)": pair.trajectory}
    rows = [
        (step, name, float(value)) for name, values in series.items() for step, value in zip(steps, values, strict=True)
    ]
    return pd.DataFrame(rows, columns=["step", "series", "mean |A − B|"])


def shift_table(pair: Comparison) -> pd.DataFrame:
    """Every word of A with its attention share in A and B and its shift (blank where B dropped the word)."""
    labels = pair.views[0].word_labels
    rows = [
        (labels[s.index_a], s.mass_a, s.mass_b, s.shift if s.shift is not None else float("nan")) for s in pair.shifts
    ]
    return pd.DataFrame(rows, columns=["word", "attention A", "attention B", "shift"])


def progress_line(line: gr.Markdown, preview: gr.Image | None, label: str, update: StepUpdate | None) -> dict:
    """A `Show`: each step's progress on `line`, and its x̂₀ preview on `preview` if given."""
    if update is None:
        return {line: f"Recorded {label}."}
    doing = "Stopped" if update.stopped else "Recording"
    shown = {line: f"{doing} {label}: step {update.step} of {update.total}"}
    return shown | ({preview: update.previews[0]} if preview is not None else {})


def no_preview(label: str, update: StepUpdate | None) -> tuple:
    """A `Show` for the API's three outputs: nothing until the result."""
    return gr.skip(), gr.skip(), gr.skip()


# Comparing ---------------------------------------------------------------------------------------------------------


def draw(pair: Comparison | None, at: int, chosen: int | None) -> tuple:
    """x̂₀ of A and B at the step, and the chosen word's attention in both (one colour scale)."""
    if pair is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    at = min(max(int(at), 1), pair.a.steps) - 1
    words = [index for _, index in pair.word_choices()]
    if not words:  # an empty prompt: no word to show
        return *pair.x0_at(at), None, None
    heat = pair.attention_at(at, chosen if chosen in words else words[0])
    return *pair.x0_at(at), *heat


def show_compared(view: ABView, pair: Comparison, a: GenerationRequest) -> dict:
    images, diff = pair.shown()
    chosen = content_word(pair.views[0].words)
    drawn = draw(pair, pair.a.steps, chosen)
    return {
        view.comparison: pair,
        view.last_a: Recorded(a, pair.a),
        view.slider: gr.ImageSlider(value=images, label=f"A: {pair.label_a} | B: {pair.label_b}"),
        view.difference: gr.Image(diff, label=f"Difference |A − B| ×{pair.gain}"),
        view.status: pair.describe(),
        view.step: step_slider(pair.a.steps),
        view.word: gr.Dropdown(choices=pair.word_choices(), value=chosen),
        **dict(zip(view.drawn(), drawn, strict=True)),
        view.split: difference_plot(pair),
        view.summary: pair.summary(),
    }


def compare_on_page(recorder: Recorder, view: ABView, **settings) -> Generator[dict, None, None]:
    """The Compare button: record A and B (`ab_requests`'s settings), x̂₀ of A shown as it comes, then the pair."""
    with user_errors():
        a, b, labels = ab_requests(recorder.limits, **settings)
    show = partial(progress_line, view.status, view.x0_a)
    runs = yield from recorder.record([("A", a), ("B", b)], show)
    if len(runs) < 2:
        return
    with user_errors():
        pair = Comparison(*runs, *labels)
        for shown in pair.views:
            decode_x0_if_cheap(recorder.manager, shown, recorder.limits, recorder.owner)
        yield show_compared(view, pair, a)


def compare_for_api(recorder: Recorder, **settings) -> Generator[tuple, None, None]:
    """/compare: A and B (`ab_requests`'s settings) recorded, then both images, their difference and the summary."""
    with user_errors():
        a, b, labels = ab_requests(recorder.limits, **settings)
    yield from api_result(recorder, [("A", a), ("B", b)], labels)


def api_result(
    recorder: Recorder, jobs: list[tuple[str, GenerationRequest]], labels: tuple[str, str]
) -> Generator[tuple, None, None]:
    """Record the two jobs, then yield the API's outputs: both images, their difference and the JSON summary."""
    runs = yield from recorder.record(jobs, no_preview)
    if len(runs) == 2:
        with user_errors():
            pair = Comparison(*runs, *labels)
            yield pair.images(), pair.difference(), pair.summary()


# Ablating ----------------------------------------------------------------------------------------------------------


def show_ablated(view: AblationView, pair: Comparison, label: str) -> dict:
    images, diff = pair.shown()
    words = shift_table(pair)
    moved = words.dropna()  # a removed word has no shift
    return {
        view.slider: gr.ImageSlider(value=images, label=f"A | {label}"),
        view.difference: gr.Image(diff, label=f"Difference |A − ablated| ×{pair.gain}"),
        view.status: pair.describe(),
        view.shifts: gr.BarPlot(moved, sort=list(moved["word"])),  # in the prompt's order, not the alphabet's
        view.table: words.round(4),
        view.changes: pair.change_maps(),
        view.summary: pair.summary(),
    }


def ablate_on_page(
    recorder: Recorder, view: AblationView, *, word: int | None, mode: str, recorded: Recorded | None, **settings
) -> Generator[dict, None, None]:
    """The Ablate button: A (`A_SETTINGS`) against A with its `word`-th word ablated (`mode`); A's run is reused
    when it is the A last recorded."""
    with user_errors():
        a = a_request(recorder.limits, **settings)
        reused = recorded if recorded is not None and recorded.matches(a) else None
        a = reused.request if reused else with_seed(a)
        if word is None:
            raise gr.Error("Pick a word of A's prompt to ablate.")
        b = ablate(a, word, mode, recorder.limits)
        label = ablation_label(prompt_words(a.prompt)[word].group(), mode)
    jobs = [("ablated", b)] if reused else [("A", a), ("ablated", b)]
    runs = yield from recorder.record(jobs, partial(progress_line, view.status, None))
    runs = [reused.run, *runs] if reused else runs
    if len(runs) < 2:
        return
    with user_errors():
        pair = Comparison(*runs, "A", label)
        yield {**show_ablated(view, pair, label), view.last_a: Recorded(a, pair.a)}


def ablate_for_api(recorder: Recorder, *, word: str, mode: str, **settings) -> Generator[tuple, None, None]:
    """/ablate: A (`A_SETTINGS`) and A with `word` ablated (`mode`) recorded, then both images, their difference
    and the summary."""
    with user_errors():
        a = with_seed(a_request(recorder.limits, **settings))
        b = ablate(a, word, mode, recorder.limits)
    yield from api_result(recorder, [("A", a), ("ablated", b)], ("A", "ablated"))


# The layout --------------------------------------------------------------------------------------------------------


def build(page: Page) -> None:
    comparison = gr.State(None)  # the Comparison on screen
    last_a = gr.State(None)  # Recorded: the last A, for an ablation of the same A
    gr.Markdown(
        "Run **A** and **B**, the same request with **one thing changed** and the same seed, and see what changed: "
        "the images, the predicted image x̂₀ at every step (how early the two runs part), and where each word looks."
    )
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            c = a_and_b(page.manager, page.limits)
            with gr.Row():
                start = gr.Button("Compare", variant="primary", elem_classes="compare")
                stop = gr.Button("Stop", variant="stop")
            status = gr.Markdown(elem_classes="compare-summary")
        with gr.Column(scale=2):
            ab = ab_view(comparison, last_a, status)

    def compare_runs(request: gr.Request = None, progress=gr.Progress(), **settings):
        yield from compare_on_page(Recorder(page.manager, page.limits, request, progress), ab, **settings)

    inputs = c.named(*A_SETTINGS) | {"differs_in": c.differs, "b_value": c.b_value}
    compared = start.click(
        compare_runs,
        inputs_kwargs=inputs,
        outputs=ab.outputs(),
        show_progress_on=status,
        api_visibility="private",
        **GPU,
    )
    wire_stop(page.manager, stop, compared)
    # On the user's input only: a compare draws its own last step, and redraws triggered by its setting the step and
    # the word (changes too) raced it, read the step from before the update, and could land last.
    gr.on(
        [ab.step.input, ab.word.input], draw, [comparison, ab.step, ab.word], ab.drawn(), show_progress="hidden",
        api_visibility="private", trigger_mode="always_last",
    )  # fmt: skip
    ablation = ablation_section(page, c, last_a)
    wire_api(page, c, ab, ablation)
    page.offer(TAB.id, c)
    page.follow_model(c)
    page.when_built(lambda: send_from_explain(page, c))


def a_and_b(manager: ModelManager, limits: Limits) -> CompareControls:
    """A's settings and B's one change, with the preset pairs that fill in both."""
    presets = gr.Dropdown(
        preset_names(manager.model), value=None, label="Preset contrast pair",
        info="Fills A's prompt and what B changes.",
    )  # fmt: skip
    gr.Markdown("**A**")
    a = controls(manager, limits, batch=False)
    gr.Markdown("**B** is A with one change")
    with gr.Row():
        differs = gr.Dropdown(list(FIELDS), value="Word", label="B differs in", scale=1)
        value = gr.Textbox(label="B's value", placeholder="red -> blue", scale=2)
    chosen = [a.prompt, differs, value, a.guidance_scale]
    presets.input(preset_pair, presets, chosen, queue=False, api_visibility="private")
    return CompareControls(
        **{name: getattr(a, name) for name in Controls.__dataclass_fields__}, presets=presets, differs=differs,
        b_value=value,
    )  # fmt: skip


def ab_view(comparison: gr.State, last_a: gr.State, status: gr.Markdown) -> ABView:
    """The right-hand column: A | B, the difference, x̂₀ and a word's attention at the scrubbed step, the split."""
    slider = gr.ImageSlider(label="A | B", type="pil", format="png", elem_classes="ab-slider", max_height=420)
    difference = gr.Image(
        label="Difference |A − B| (amplified)", format="png", interactive=False, height=PANEL_HEIGHT,
        elem_classes="ab-difference",
    )  # fmt: skip
    step = gr.Slider(1, 2, value=1, step=1, label="Step", interactive=False)
    with gr.Row():
        x0_a = gr.Image(label="x̂₀ · A", format="jpeg", interactive=False, height=PANEL_HEIGHT, elem_classes="x0-a")
        x0_b = gr.Image(label="x̂₀ · B", format="jpeg", interactive=False, height=PANEL_HEIGHT)
    word = gr.Dropdown([], label="Word of A (B: the word in its place)", value=None)
    with gr.Row():
        heat_a = gr.Image(
            label="Where the word looks · A", format="jpeg", interactive=False, height=PANEL_HEIGHT,
            elem_classes="heat-a",
        )  # fmt: skip
        heat_b = gr.Image(label="Where the word looks · B", format="jpeg", interactive=False, height=PANEL_HEIGHT)
    split = gr.LinePlot(
        x="step", y="mean |A − B|", color="series", title="How far apart A and B are, step by step (latents)",
        height=240,
    )  # fmt: skip
    with gr.Accordion("Comparison as JSON (what /compare returns)", open=False):
        summary = gr.JSON(label="Comparison (JSON)")
    return ABView(
        comparison, last_a, slider, difference, status, step, word, x0_a, x0_b, heat_a, heat_b, split, summary
    )


def ablation_section(page: Page, c: CompareControls, last_a: gr.State) -> AblationView:
    """ "What if this word weren't there?": a word of A's prompt, how to ablate it, and what changed."""
    gr.Markdown("## What if this word weren't there?")
    gr.Markdown(
        "Pick a word of A's prompt and run A again, same seed, with that word **removed** or at another **weight** "
        "(A1111's `(word:0.5)`). The other words' attention moves to fill the gap: red where a word looks more, blue "
        "where less."
    )
    with gr.Row():
        word = gr.Dropdown([], label="Word of A's prompt", value=None, scale=2)
        mode = gr.Radio(list(ABLATIONS), value=ABLATIONS[0], label="Remove it, or weight it", scale=2)
        with gr.Column(scale=1, min_width=160):
            start = gr.Button("Ablate", variant="primary", elem_classes="ablate")
            stop = gr.Button("Stop", variant="stop")
    quiet = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
    c.prompt.change(prompt_word_choices, c.prompt, word, **quiet)
    view = ablation_view(last_a)

    def ablate_word(request: gr.Request = None, progress=gr.Progress(), **settings):
        yield from ablate_on_page(Recorder(page.manager, page.limits, request, progress), view, **settings)

    inputs = c.named(*A_SETTINGS) | {"word": word, "mode": mode, "recorded": last_a}
    ablated = start.click(
        ablate_word, inputs_kwargs=inputs, outputs=view.outputs(), show_progress_on=view.status,
        api_visibility="private", **GPU,
    )  # fmt: skip
    wire_stop(page.manager, stop, ablated)
    return view


def ablation_view(last_a: gr.State) -> AblationView:
    """An ablation's outputs: A | ablated and their difference, each word's shift (a bar, a row, a map), the JSON."""
    status = gr.Markdown(elem_classes="ablation-summary")
    with gr.Row():
        slider = gr.ImageSlider(
            label="A | ablated", type="pil", format="png", elem_classes="ablation-slider", max_height=360
        )
        difference = gr.Image(
            label="Difference |A − ablated| (amplified)", format="png", interactive=False, height=PANEL_HEIGHT,
            elem_classes="ablation-difference",
        )  # fmt: skip
    with gr.Row():
        shifts = gr.BarPlot(x="word", y="shift", title="How much each word's attention moved (mean |Δ|)", height=260)
        table = gr.Dataframe(label="Attention per word", interactive=False, elem_classes="shift-table")
    gr.Markdown("**Each word's attention change** (ablated − A, over all steps; one scale for all words)")
    changes = gr.Gallery(
        show_label=False, format="png", columns=6, height="auto", allow_preview=False, interactive=False,
        elem_classes="shift-maps",
    )  # fmt: skip
    with gr.Accordion("Ablation as JSON (what /ablate returns)", open=False):
        summary = gr.JSON(label="Ablation (JSON)")
    return AblationView(slider, difference, status, shifts, table, changes, summary, last_a)


def wire_api(page: Page, c: CompareControls, ab: ABView, ablation: AblationView) -> None:
    """/compare and /ablate: A's settings (as /txt2img's) and B's change, or the word to ablate; the images, their
    difference and the JSON summary go to the page's own outputs."""
    # Plain text inputs: the page's dropdowns accept only their choices (the word's, set per page), a script any.
    differs_text, value_text = gr.Textbox("Word", visible=False), gr.Textbox("", visible=False)
    word_text, mode_text = gr.Textbox("", visible=False), gr.Textbox(ABLATIONS[0], visible=False)

    def compare_api(request: gr.Request = None, progress=gr.Progress(), **settings):
        """Same-seed A/B: A is a text-to-image request with /txt2img's parameters, B the same with one field changed
        (`differs_in`: Word, Prompt, Negative prompt, CFG scale, Sampler, Schedule type, Steps or Seed; a Word is
        written 'old -> new'). Returns the two images, their difference (amplified by the JSON's difference_gain) and
        a JSON summary: both recipes, the pixel difference, the per-step x̂₀ difference, the step where they part,
        and each word's attention."""
        yield from compare_for_api(Recorder(page.manager, page.limits, request, progress), **settings)

    def ablate_api(request: gr.Request = None, progress=gr.Progress(), **settings):
        """What if this word weren't there: A (/txt2img's parameters) and A again, same seed, with `word` (a word of
        the prompt, its first occurrence, or its 0-based index among the prompt's words) removed (`mode` 'removed')
        or at an emphasis weight (`mode` '0', '0.5', '1.5', ...). Returns both images, their difference (amplified)
        and a JSON summary with every word's attention in A and in the ablated run and how much it moved."""
        yield from ablate_for_api(Recorder(page.manager, page.limits, request, progress), **settings)

    a_settings = c.named(*A_SETTINGS)
    compare_inputs = a_settings | {"differs_in": differs_text, "b_value": value_text}
    compare_outputs = [ab.slider, ab.difference, ab.summary]
    gr.on([], compare_api, inputs_kwargs=compare_inputs, outputs=compare_outputs, api_name="compare", **GPU)
    ablate_inputs = a_settings | {"word": word_text, "mode": mode_text}
    ablate_outputs = [ablation.slider, ablation.difference, ablation.summary]
    gr.on([], ablate_api, inputs_kwargs=ablate_inputs, outputs=ablate_outputs, api_name="ablate", **GPU)


def send_from_explain(page: Page, compared: Controls) -> None:
    """A button at the foot of the Explain tab opens its prompt and settings in Compare."""
    explained = page.part("explain")
    with explained.footer:
        button = gr.Button("Compare with a change, or ablate a word: open this prompt in Compare")
    send_settings(button, explained, compared, page.tabs)


TAB = Tab("compare", "Compare", build)
