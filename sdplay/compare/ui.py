"""The Compare tab: run A and B (same seed, one field changed) as two Explain captures and show what differs, in the
image and inside; and "what if this word weren't there": A against A with one word removed or reweighted.

Layout and wiring only: sdplay/compare/comparison.py builds B and measures the two runs.
"""

from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace

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
from sdplay.runtime.samplers import AUTOMATIC, schedule_names
from sdplay.ui.common import GPU, Controls, controls, run, user_errors, wire_stop
from sdplay.ui.tabs import Page, Tab

PANEL_HEIGHT = 260
PRESETS = {
    f"{group}: {pair.name}": pair
    for group, pairs in (("Shapes", SHAPES_CONTRASTS), ("SD", SD_CONTRASTS))
    for pair in pairs
}


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


def send_settings(button: gr.Button, source: Controls, target: Controls, tabs: gr.Tabs) -> None:
    """`button` (in another tab: Explain) copies that tab's prompt and settings into Compare's A and opens Compare,
    where B and the ablation are a click away."""
    fields = ["prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "seed", "width", "height"]

    def send(*values):
        *settings, schedule = values
        with user_errors():
            offered = schedule_names(settings[fields.index("sampler")])
        return *settings, gr.Dropdown(choices=offered, value=schedule), gr.Tabs(selected="compare")

    inputs = [*(getattr(source, name) for name in fields), source.schedule]
    outputs = [*(getattr(target, name) for name in fields), target.schedule, tabs]
    button.click(send, inputs, outputs, queue=False, api_visibility="private")


def preset_names(model: LoadedModel) -> list[str]:
    fitting = presets_for(model.settings.vocabulary)
    return [name for name, pair in PRESETS.items() if pair in fitting]


def record_runs(
    manager: ModelManager,
    limits: Limits,
    jobs: list[tuple[str, GenerationRequest]],
    session: gr.Request | None,
    progress: gr.Progress,
    show: Callable[[str, StepUpdate | None], dict | tuple],
) -> Generator[dict | tuple, None, list[ExplainRun]]:
    """Record each (label, request) as an Explain capture, one executor job each, in the GPU queue's one slot;
    `show(label, update)` turns a step (None: a finished run) into the event's outputs. Returns the runs: fewer
    than the jobs when Stop ended one (the page has then been told where)."""
    runs: list[ExplainRun] = []
    for label, job in jobs:
        kept: list[ExplainRun] = []

        def shown(item: StepUpdate | ExplainRun, label: str = label, kept: list = kept) -> dict | tuple:
            if isinstance(item, ExplainRun):
                kept.append(item)
                return show(label, None)
            return show(label, item)

        yield from run(manager, job, limits, session, progress, job=explain, show=shown)
        if not kept:
            break
        runs += kept
    return runs


def a_request(prompt, negative_prompt, sampler, steps, guidance_scale, seed, width, height, schedule, limits):
    return validated(
        GenerationRequest(
            task=Task.TXT2IMG, prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, schedule=schedule,
            steps=steps, guidance_scale=guidance_scale, seed=seed, width=width, height=height,
        ),
        limits,
    )  # fmt: skip


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


def build(page: Page) -> None:
    manager, limits = page.manager, page.limits
    comparison = gr.State(None)  # the Comparison on screen
    last_a = gr.State(None)  # Recorded: the last A, for an ablation of the same A
    gr.Markdown(
        "Run **A** and **B**, the same request with **one thing changed** and the same seed, and see what changed: "
        "the images, the predicted image x̂₀ at every step (how early the two runs part), and where each word looks."
    )
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            presets = gr.Dropdown(
                preset_names(manager.model), value=None, label="Preset contrast pair",
                info="Fills A's prompt and what B changes.",
            )  # fmt: skip
            gr.Markdown("**A**")
            c = controls(manager, limits, batch=False)
            gr.Markdown("**B** is A with one change")
            with gr.Row():
                differs = gr.Dropdown(list(FIELDS), value="Word", label="B differs in", scale=1)
                value = gr.Textbox(label="B's value", placeholder="red -> blue", scale=2)
            with gr.Row():
                start = gr.Button("Compare", variant="primary", elem_classes="compare")
                stop = gr.Button("Stop", variant="stop")
            status = gr.Markdown(elem_classes="compare-summary")
        with gr.Column(scale=2):
            slider = gr.ImageSlider(label="A | B", type="pil", format="png", elem_classes="ab-slider", max_height=420)
            difference = gr.Image(
                label="Difference |A − B| (amplified)", format="png", interactive=False, height=PANEL_HEIGHT,
                elem_classes="ab-difference",
            )  # fmt: skip
            step = gr.Slider(1, 2, value=1, step=1, label="Step", interactive=False)
            with gr.Row():
                x0_a = gr.Image(
                    label="x̂₀ · A", format="jpeg", interactive=False, height=PANEL_HEIGHT, elem_classes="x0-a"
                )
                x0_b = gr.Image(label="x̂₀ · B", format="jpeg", interactive=False, height=PANEL_HEIGHT)
            word = gr.Dropdown([], label="Word of A (B: the word in its place)", value=None)
            with gr.Row():
                heat_a = gr.Image(
                    label="Where the word looks · A",
                    format="jpeg",
                    interactive=False,
                    height=PANEL_HEIGHT,
                    elem_classes="heat-a",
                )
                heat_b = gr.Image(
                    label="Where the word looks · B", format="jpeg", interactive=False, height=PANEL_HEIGHT
                )
            split = gr.LinePlot(
                x="step", y="mean |A − B|", color="series", title="How far apart A and B are, step by step (latents)",
                height=240,
            )  # fmt: skip
            with gr.Accordion("Comparison as JSON (what /compare returns)", open=False):
                summary = gr.JSON(label="Comparison (JSON)")

    gr.Markdown("## What if this word weren't there?")
    gr.Markdown(
        "Pick a word of A's prompt and run A again, same seed, with that word **removed** or at another **weight** "
        "(A1111's `(word:0.5)`). The other words' attention moves to fill the gap: red where a word looks more, blue "
        "where less."
    )
    with gr.Row():
        ablated_word = gr.Dropdown([], label="Word of A's prompt", value=None, scale=2)
        mode = gr.Radio(list(ABLATIONS), value=ABLATIONS[0], label="Remove it, or weight it", scale=2)
        with gr.Column(scale=1, min_width=160):
            ablate_button = gr.Button("Ablate", variant="primary", elem_classes="ablate")
            ablate_stop = gr.Button("Stop", variant="stop")
    ablation_status = gr.Markdown(elem_classes="ablation-summary")
    with gr.Row():
        ablation_slider = gr.ImageSlider(
            label="A | ablated", type="pil", format="png", elem_classes="ablation-slider", max_height=360
        )
        ablation_difference = gr.Image(
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
        ablation_json = gr.JSON(label="Ablation (JSON)")

    c = CompareControls(
        **{name: getattr(c, name) for name in Controls.__dataclass_fields__}, presets=presets, differs=differs,
        b_value=value,
    )  # fmt: skip

    # Presets and words ---------------------------------------------------------------------------------------

    def choose(name: str | None):
        pair: Contrast | None = PRESETS.get(name or "")
        if pair is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        label = next(label for label, value in FIELDS.items() if value == pair.field)
        guidance = float(pair.a_value) if pair.field == "guidance_scale" and pair.a_value else gr.skip()
        return pair.prompt, label, pair.value, guidance

    presets.input(choose, presets, [c.prompt, differs, value, c.guidance_scale], queue=False, api_visibility="private")

    def words_of_prompt(prompt: str):
        words = [match.group() for match in prompt_words(prompt or "")]
        return gr.Dropdown(choices=[(f"{w} ({i + 1})", i) for i, w in enumerate(words)], value=0 if words else None)

    c.prompt.change(
        words_of_prompt, c.prompt, ablated_word, queue=False, show_progress="hidden", api_visibility="private"
    )

    # Comparing -----------------------------------------------------------------------------------------------

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

    def show_compared(pair: Comparison, a: GenerationRequest) -> dict:
        images, diff = pair.shown()
        chosen = content_word(pair.views[0].words)
        drawn = draw(pair, pair.a.steps, chosen)
        return {
            comparison: pair,
            last_a: Recorded(a, pair.a),
            slider: gr.ImageSlider(value=images, label=f"A: {pair.label_a} | B: {pair.label_b}"),
            difference: gr.Image(diff, label=f"Difference |A − B| ×{pair.gain}"),
            status: pair.describe(),
            step: step_slider(pair.a.steps),
            word: gr.Dropdown(choices=pair.word_choices(), value=chosen),
            **dict(zip((x0_a, x0_b, heat_a, heat_b), drawn, strict=True)),
            split: difference_plot(pair),
            summary: pair.summary(),
        }

    def recording(line: gr.Markdown, preview: gr.Image | None = None) -> Callable[[str, StepUpdate | None], dict]:
        """Each step's progress on `line`, and its x̂₀ preview on `preview` if given."""

        def show(label: str, update: StepUpdate | None) -> dict:
            if update is None:
                return {line: f"Recorded {label}."}
            doing = "Stopped" if update.stopped else "Recording"
            shown = {line: f"{doing} {label}: step {update.step} of {update.total}"}
            return shown | ({preview: update.previews[0]} if preview is not None else {})

        return show

    def compare_runs(
        prompt, negative_prompt, sampler, steps, guidance_scale, seed, width, height, schedule, differs_in, b_value,
        request: gr.Request = None, progress=gr.Progress(),
    ):  # fmt: skip
        with user_errors():
            a = with_seed(a_request(prompt, negative_prompt, sampler, steps, guidance_scale, seed, width, height,
                                    schedule, limits))  # fmt: skip
            field_name = FIELDS.get(differs_in, differs_in)
            b = variant(a, field_name, b_value, limits)
        show = recording(status, x0_a)
        runs = yield from record_runs(manager, limits, [("A", a), ("B", b)], request, progress, show)
        if len(runs) < 2:
            return
        with user_errors():
            pair = Comparison(*runs, *pair_labels(a, b, field_name))
            for view in pair.views:
                decode_x0_if_cheap(manager, view, limits, request.session_hash if request else None)
            yield show_compared(pair, a)

    a_inputs = [*c.inputs(), c.width, c.height, c.schedule]
    compare_outputs = [comparison, last_a, slider, difference, status, step, word, x0_a, x0_b, heat_a, heat_b]
    compare_outputs += [split, summary]
    compared = start.click(
        compare_runs,
        [*a_inputs, differs, value],
        compare_outputs,
        show_progress_on=status,
        api_visibility="private",
        **GPU,
    )
    wire_stop(manager, stop, compared)
    redraw = dict(fn=draw, inputs=[comparison, step, word], outputs=[x0_a, x0_b, heat_a, heat_b])
    # On the user's input only: a compare draws its own last step, and redraws triggered by its setting the step and
    # the word (changes too) raced it, read the step from before the update, and could land last.
    gr.on(
        [step.input, word.input], **redraw, show_progress="hidden", api_visibility="private",
        trigger_mode="always_last",
    )  # fmt: skip

    # Ablating ------------------------------------------------------------------------------------------------

    def show_ablated(pair: Comparison, label: str) -> dict:
        images, diff = pair.shown()
        words = shift_table(pair)
        moved = words.dropna()  # a removed word has no shift
        return {
            ablation_slider: gr.ImageSlider(value=images, label=f"A | {label}"),
            ablation_difference: gr.Image(diff, label=f"Difference |A − ablated| ×{pair.gain}"),
            ablation_status: pair.describe(),
            shifts: gr.BarPlot(moved, sort=list(moved["word"])),  # in the prompt's order, not the alphabet's
            table: words.round(4),
            changes: pair.change_maps(),
            ablation_json: pair.summary(),
        }

    def ablate_word(
        prompt, negative_prompt, sampler, steps, guidance_scale, seed, width, height, schedule, chosen, how,
        recorded: Recorded | None, request: gr.Request = None, progress=gr.Progress(),
    ):  # fmt: skip
        with user_errors():
            a = a_request(
                prompt, negative_prompt, sampler, steps, guidance_scale, seed, width, height, schedule, limits
            )
            reused = recorded if recorded is not None and recorded.matches(a) else None
            a = reused.request if reused else with_seed(a)
            if chosen is None:
                raise gr.Error("Pick a word of A's prompt to ablate.")
            b = ablate(a, chosen, how, limits)
            label = ablation_label(prompt_words(a.prompt)[chosen].group(), how)
        jobs = [("ablated", b)] if reused else [("A", a), ("ablated", b)]
        runs = yield from record_runs(manager, limits, jobs, request, progress, recording(ablation_status))
        runs = [reused.run, *runs] if reused else runs
        if len(runs) < 2:
            return
        with user_errors():
            pair = Comparison(*runs, "A", label)
            yield {**show_ablated(pair, label), last_a: Recorded(a, pair.a)}

    ablate_outputs = [ablation_slider, ablation_difference, ablation_status, shifts, table, changes, ablation_json]
    ablated = ablate_button.click(
        ablate_word, [*a_inputs, ablated_word, mode, last_a], [*ablate_outputs, last_a],
        show_progress_on=ablation_status, api_visibility="private", **GPU,
    )  # fmt: skip
    wire_stop(manager, ablate_stop, ablated)

    # The API -------------------------------------------------------------------------------------------------

    def api_show(label: str, update: StepUpdate | None) -> tuple:
        return gr.skip(), gr.skip(), gr.skip()

    def compare_api(
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: int,
        guidance_scale: float,
        seed: int,
        width: int,
        height: int,
        schedule: str = AUTOMATIC,
        differs_in: str = "Word",
        b_value: str = "",
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Same-seed A/B: A is a text-to-image request with /txt2img's parameters, B the same with one field changed
        (`differs_in`: Word, Prompt, Negative prompt, CFG scale, Sampler, Schedule type, Steps or Seed; a Word is
        written 'old -> new'). Returns the two images, their difference (amplified by the JSON's difference_gain) and
        a JSON summary: both recipes, the pixel difference, the per-step x̂₀ difference, the step where they part,
        and each word's attention."""
        with user_errors():
            a = with_seed(a_request(prompt, negative_prompt, sampler, steps, guidance_scale, seed, width, height,
                                    schedule, limits))  # fmt: skip
            field_name = FIELDS.get(differs_in, differs_in)
            b = variant(a, field_name, b_value, limits)
        runs = yield from record_runs(manager, limits, [("A", a), ("B", b)], request, progress, api_show)
        if len(runs) == 2:
            with user_errors():
                pair = Comparison(*runs, *pair_labels(a, b, field_name))
                yield pair.images(), pair.difference(), pair.summary()

    def ablate_api(
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: int,
        guidance_scale: float,
        seed: int,
        width: int,
        height: int,
        schedule: str = AUTOMATIC,
        word: str = "",
        mode: str = "removed",
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """What if this word weren't there: A (/txt2img's parameters) and A again, same seed, with `word` (a word of
        the prompt, its first occurrence, or its 0-based index among the prompt's words) removed (`mode` 'removed')
        or at an emphasis weight (`mode` '0', '0.5', '1.5', ...). Returns both images, their difference (amplified)
        and a JSON summary with every word's attention in A and in the ablated run and how much it moved."""
        with user_errors():
            a = with_seed(a_request(prompt, negative_prompt, sampler, steps, guidance_scale, seed, width, height,
                                    schedule, limits))  # fmt: skip
            b = ablate(a, word, mode, limits)
        runs = yield from record_runs(manager, limits, [("A", a), ("ablated", b)], request, progress, api_show)
        if len(runs) == 2:
            with user_errors():
                pair = Comparison(*runs, "A", "ablated")
                yield pair.images(), pair.difference(), pair.summary()

    # Plain text inputs: the page's dropdowns accept only their choices (the word's, set per page), a script any.
    differs_text, value_text = gr.Textbox("Word", visible=False), gr.Textbox("", visible=False)
    word_text, mode_text = gr.Textbox("", visible=False), gr.Textbox(ABLATIONS[0], visible=False)
    compare_inputs = [*a_inputs, differs_text, value_text]
    gr.on([], compare_api, compare_inputs, [slider, difference, summary], api_name="compare", **GPU)
    ablate_inputs = [*a_inputs, word_text, mode_text]
    gr.on([], ablate_api, ablate_inputs, [ablation_slider, ablation_difference, ablation_json], api_name="ablate",
          **GPU)  # fmt: skip
    page.offer(TAB.id, c)
    page.follow_model(c)
    page.when_built(lambda: send_from_explain(page, c))


def send_from_explain(page: Page, compared: Controls) -> None:
    """A button at the foot of the Explain tab opens its prompt and settings in Compare."""
    explained = page.part("explain")
    with explained.footer:
        button = gr.Button("Compare with a change, or ablate a word: open this prompt in Compare")
    send_settings(button, explained, compared, page.tabs)


TAB = Tab("compare", "Compare", build)
