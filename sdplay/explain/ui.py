"""The Explain tab: record one generation, then scrub its steps and see where each word of the prompt looks.

Layout and wiring only: `sdplay.explain.capture` records the run and `sdplay.explain.render` draws every panel.
"""

import tempfile
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import gradio as gr
from PIL import Image

from sdplay.explain import presentation
from sdplay.explain.captions import PER_MODEL, Caption, ModelFacts, captions
from sdplay.explain.capture import ExplainRun, explain
from sdplay.explain.decoding import decode_order, decode_x0, decodes_unasked
from sdplay.explain.export import save_run
from sdplay.explain.render import (
    COLORMAPS,
    ExplainView,
    HeatmapSettings,
    content_word,
    export_name,
    replay_view,
)
from sdplay.runtime.generate import StepUpdate
from sdplay.runtime.images import mask_from_editor
from sdplay.runtime.request import GenerationRequest, Task
from sdplay.runtime.samplers import AUTOMATIC
from sdplay.ui.common import GPU, Controls, controls, mask_editor, run, user_errors, wire_stop
from sdplay.ui.tabs import Page, Tab

TASKS = [("Text-to-Image", Task.TXT2IMG.value), ("Image-to-Image", Task.IMG2IMG.value), ("Inpaint", Task.INPAINT.value)]
SHARED, RANGE = "Shared scale", "A range of steps"
PANEL_HEIGHT = 230
PLAY_SECONDS = 0.8  # one step per tick: slow enough to read the step label
BUDGET_COLOURS = {"start token": "#9ca3af", "words": "#f97316", "end + padding": "#60a5fa"}
# How each step-dependent image is sent. Encoding is on the scrubbing path: on a busy 2-core CPU, PNG (zlib level
# 6) took 20–120 ms per 256² panel and JPEG under 2 ms. The sharp, flat channel tiles stay PNG (4 ms, no ringing).
PANEL_FORMATS = {
    "x_t": "jpeg", "x0": "jpeg", "eps_uncond": "jpeg", "eps_cond": "jpeg", "guidance": "jpeg", "channels": "png",
    "heatmap": "jpeg", "layers": "jpeg", "negative": "jpeg", "blended": "jpeg",
}  # fmt: skip


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


def gallery(label: str, format: str) -> gr.Gallery:
    """Small multiples at a fixed size, whatever their number (one per UNet block: 4 to 8 of them). The label goes
    above the gallery: Gradio floats it over the gallery's top left corner, onto the first tile."""
    gr.Markdown(f"**{label}**", elem_classes="gallery-label")
    return gr.Gallery(
        label=label, show_label=False, format=format, columns=8, fit_columns=False, height=210, allow_preview=False,
        interactive=False,
    )  # fmt: skip


def build(page: Page) -> None:
    manager, limits = page.manager, page.limits
    view = gr.State(None)  # the ExplainView of the run on screen
    texts = captions(ModelFacts.of_pipeline(manager.model.pipe))  # each run then states its own model's numbers
    shown_captions: dict[str, tuple[gr.Markdown, gr.Markdown]] = {}

    def caption(key: str) -> None:
        shown_captions[key] = panel_caption(texts[key])

    gr.Markdown(texts["overview"].short)
    with gr.Accordion("How does Stable Diffusion make an image?", open=False):
        gr.Markdown(texts["overview"].more)
    presenting = presentation.toggle()

    # Settings on the left, the scrubber, the image and the word maps on the right.
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            task = gr.Radio(TASKS, value=Task.TXT2IMG.value, label="Task")
            editor = mask_editor("Image (for Inpaint, paint over what to repaint)", 300, visible=False)
            strength = gr.Slider(0.01, 1, value=0.75, step=0.01, label="Denoising strength", visible=False)
            c = controls(manager, limits, batch=False, prefilled=True)  # a first press shows words at work
            with gr.Row():
                start = gr.Button("Explain", variant="primary", elem_classes="explain")
                stop = gr.Button("Stop", variant="stop")
            summary = gr.Markdown()
        with gr.Column(scale=2):
            with gr.Row():
                step = gr.Slider(1, 2, value=1, step=1, label="Step", interactive=False, scale=5, elem_classes="step")
                with gr.Column(scale=0, min_width=110):
                    play = gr.Button("▶ Play")
                timer = gr.Timer(PLAY_SECONDS, active=False)
            step_label = gr.Markdown("Press **Explain** to record a run, or replay a saved one at the bottom.")
            caption("step")
            with gr.Row():
                with gr.Column():
                    final = image("Final image")
                    caption("final")
                with gr.Column():
                    heatmap = image("Where the word looks", PANEL_FORMATS["heatmap"], elem_classes="heatmap")
                    scale = gr.HTML()
                    caption("heatmap")
            chips = gr.Radio([], label="Words of the prompt", elem_classes="chips")
            token_info = gr.Markdown()
            with gr.Accordion("Subwords: how the tokenizer split each word", open=False):
                subwords = gr.Markdown()
            caption("tokens")
            with gr.Row():
                colormap = gr.Dropdown(list(COLORMAPS), value="viridis", label="Colour map", min_width=120)
                opacity = gr.Slider(0, 1, value=0.6, step=0.05, label="Opacity")
                normalisation = gr.Radio(["Per word", SHARED], value="Per word", label="Scale")
            with gr.Row():
                step_mode = gr.Radio(["This step", RANGE], value="This step", label="Steps")
                first = gr.Slider(1, 2, value=1, step=1, label="From step")
                last = gr.Slider(1, 2, value=2, step=1, label="To step")

    gr.Markdown("## Inside this step")
    with gr.Row():
        with gr.Column(min_width=180):
            x_t = image("x_t · noisy latent", PANEL_FORMATS["x_t"])
            caption("x_t")
        with gr.Column(min_width=180):
            x0 = image("x̂₀ · predicted image", PANEL_FORMATS["x0"], elem_classes="x0")
            decode = gr.Button("Decode x̂₀ of every step with the VAE", size="sm")
            caption("x0")
        with gr.Column(min_width=180):
            eps_uncond = image("ε_uncond", PANEL_FORMATS["eps_uncond"])
            caption("eps_uncond")
        with gr.Column(min_width=180):
            eps_cond = image("ε_cond", PANEL_FORMATS["eps_cond"])
            caption("eps_cond")
        with gr.Column(min_width=180):
            guidance = image("Guidance term", PANEL_FORMATS["guidance"])
            caption("guidance")
    eps_note = gr.Markdown()
    redraw_strip = presentation.filmstrip_panel(view, step, final)
    with gr.Row():
        with gr.Column(scale=2):
            channels = gr.Image(label="Latent channels", format=PANEL_FORMATS["channels"], interactive=False)
            caption("channels")
        with gr.Column(scale=1, visible=False) as mask_column:
            mask = image("Mask at latent resolution")
            caption("mask")
        with gr.Column(scale=1, visible=False) as blended_column:
            blended = image("After blending the known region", PANEL_FORMATS["blended"])
            caption("blended")

    gr.Markdown("## Where the words look")
    layers = gallery("The chosen word in each UNet block", PANEL_FORMATS["layers"])
    caption("layers")
    with gr.Row(elem_classes="timeline"):
        mass = gr.Image(label="Attention mass", show_label=False, format="png", interactive=False)
        concentration = gr.Image(label="Concentration", show_label=False, format="png", interactive=False)
    caption("timeline")
    budget = gr.BarPlot(
        x="step", y="share", color="part", title="Attention budget", height=260, y_lim=[0, 1], color_map=BUDGET_COLOURS
    )
    caption("budget")
    negative = gallery("Negative prompt words", PANEL_FORMATS["negative"])
    caption("negative")

    gr.Markdown("## Save and replay")
    with gr.Row():
        export = gr.File(label="Download this run (.safetensors)", interactive=False)
        upload = gr.File(label="Replay a saved run", file_types=[".safetensors"], type="filepath")
    caption("export")

    # Drawing ------------------------------------------------------------------------------------------------

    panels = {
        "label": step_label, "x_t": x_t, "x0": x0, "eps_uncond": eps_uncond, "eps_cond": eps_cond,
        "guidance": guidance, "eps_note": eps_note, "channels": channels, "heatmap": heatmap, "scale": scale,
        "layers": layers, "negative": negative, "blended": blended,
    }  # fmt: skip
    run_outputs = [view, final, summary, step, first, last, chips, token_info, subwords, mass, concentration]
    run_outputs += [budget, mask, mask_column, blended_column]
    run_outputs += [part for key in PER_MODEL for part in shown_captions[key]]

    def show_run(shown: ExplainView) -> dict:
        """Everything that is fixed for a run; `redraw` then draws its last step."""
        steps = shown.run.steps
        word = content_word(shown.words)
        inpaint = shown.run.mask is not None
        run_texts = captions(shown.facts)  # the run's model, which need not be the one loaded now
        stated = {}
        for key in PER_MODEL:
            short, more = shown_captions[key]
            stated |= {short: run_texts[key].short, more: run_texts[key].more}
        return {
            **stated,
            view: shown,
            final: shown.image,
            summary: shown.summary(),
            **dict(zip((step, first, last), step_sliders(steps), strict=True)),
            chips: gr.Radio(choices=shown.chips(), value=word),
            token_info: shown.token_summary(),
            subwords: shown.subword_table(),
            mass: shown.timeline_chart("mass", word),
            concentration: shown.timeline_chart("concentration", word),
            # Steps as categories: numeric x makes hairline bars.
            budget: gr.BarPlot(shown.budget.astype({"step": str}), sort=[str(s) for s in range(1, steps + 1)]),
            mask: shown.mask(),
            mask_column: gr.Column(visible=inpaint),
            blended_column: gr.Column(visible=inpaint),
        }

    def redraw(
        shown: ExplainView | None, at: int, word: int | None, cmap: str, alpha: float, scaling: str, mode: str, a, b
    ):
        if shown is None:
            return {component: gr.skip() for component in panels.values()}
        steps = shown.run.steps
        word = word if word is not None and 0 <= word < len(shown.words) else 0
        span = tuple(sorted((step_index(a, steps), step_index(b, steps)))) if mode == RANGE else None
        settings = HeatmapSettings(word, cmap if cmap in COLORMAPS else "viridis", alpha, scaling == SHARED, span)
        drawn = shown.draw(step_index(at, steps), settings)
        return {component: getattr(drawn, name) for name, component in panels.items()}

    settings_inputs = [view, step, chips, colormap, opacity, normalisation, step_mode, first, last]
    redraw_event = dict(fn=redraw, inputs=settings_inputs, outputs=list(panels.values()), show_progress="hidden")
    triggers = [step.change, chips.change, colormap.change, opacity.release, normalisation.change]
    triggers += [step_mode.change, first.release, last.release]
    gr.on(triggers, **redraw_event, api_visibility="private")

    def timelines(shown: ExplainView | None, word: int | None):
        """The timeline charts with the chosen word highlighted (they do not depend on the step)."""
        if shown is None or word is None or not 0 <= word < len(shown.words):
            return gr.skip(), gr.skip()
        return shown.timeline_chart("mass", word), shown.timeline_chart("concentration", word)

    chips.change(timelines, [view, chips], [mass, concentration], show_progress="hidden", api_visibility="private")

    def decode_all(shown: ExplainView | None, at: int, request: gr.Request, progress=gr.Progress()):
        """Decode x̂₀ with the model's VAE, at most `MAX_DECODED` steps, as this session's job on the executor: its
        Stop ends the decoding between steps. The view keeps the decoded steps, so scrubbing stays instant."""
        if shown is None:
            raise gr.Error("Explain a prompt first.")
        steps, first = shown.run.steps, step_index(at, shown.run.steps)
        wanted, done = len(decode_order(steps, first)), 0
        with user_errors():
            progress((0, wanted), desc="Decoding x̂₀")
            for decoded in decode_x0(manager, shown, first, limits, request.session_hash):
                done += 1
                progress((done, wanted), desc="Decoding x̂₀")
                # A yield per step: where Gradio can cancel the job (on ZeroGPU, Stop cancels it).
                yield shown.x0(first) if decoded == first else gr.skip()
        if done < wanted:
            gr.Info(f"Stopped: x̂₀ decoded at {done} of {wanted} steps.")
        elif wanted < steps:
            gr.Info(f"x̂₀ decoded at {done} of the {steps} steps, spread over the run; the others keep the preview.")

    decoded = decode.click(decode_all, [view, step], x0, api_visibility="private", **GPU)

    def decode_if_cheap(shown: ExplainView | None, at: int, request: gr.Request, progress=gr.Progress()):
        """After a run, decode x̂₀ unasked where that is cheap (`decodes_unasked`)."""
        if shown is not None and decodes_unasked(manager, shown.run):
            yield from decode_all(shown, at, request, progress)
        else:
            yield gr.skip()  # a generator that yields nothing would empty x̂₀

    # Recording, replaying, playing ----------------------------------------------------------------------------

    def show_step(folder: str, item: StepUpdate | ExplainRun) -> dict:
        if isinstance(item, StepUpdate):
            doing = "Stopped at" if item.stopped else "Recording…"
            return {x0: item.previews[0], step_label: f"{doing} step {item.step} of {item.total}"}
        return {**show_run(ExplainView(item)), export: exported(folder, item)}

    def record(
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: int,
        guidance_scale: float,
        seed: int,
        width: int,
        height: int,
        task: str,
        image: dict | None,
        strength: float,
        schedule: str,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        with user_errors():
            background = image.get("background") if image else None
            painted = mask_from_editor(image) if task == Task.INPAINT and background is not None else None
        job = GenerationRequest(
            task=Task(task), prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, schedule=schedule,
            steps=steps, guidance_scale=guidance_scale, seed=seed, width=width, height=height,
            image=background, strength=strength, mask=painted,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="sdplay-explain-") as folder:
            yield from run(manager, job, limits, request, progress, job=explain, show=partial(show_step, folder))

    inputs = [*c.inputs(), c.width, c.height, task, editor, strength, c.schedule]
    outputs = [*run_outputs, x0, step_label, export]
    recorded = start.click(record, inputs, outputs, show_progress_on=step_label, api_visibility="private", **GPU)
    recorded.then(**redraw_event, api_visibility="private")
    decoded_unasked = recorded.success(
        decode_if_cheap, [view, step], x0, show_progress="hidden", api_visibility="private", **GPU
    )

    for event in (recorded, decoded, decoded_unasked):
        wire_stop(manager, stop, event)
    for event in (decoded, decoded_unasked):
        event.then(**redraw_strip)  # its frames are x̂₀s: now the decoded ones

    def replay(path: str | None):
        if path is None:
            return {}
        with user_errors():
            return {**show_run(replay_view(path, limits)), export: path}

    # In the GPU queue: drawing a long run keeps the CPU busy, and a generation waits less than it would share.
    replayed = upload.upload(replay, upload, [*run_outputs, export], api_visibility="private", **GPU)
    replayed.then(**redraw_event, api_visibility="private")

    def toggle(label: str):
        playing = label.startswith("▶")
        return gr.Timer(active=playing), gr.Button("⏸ Pause" if playing else "▶ Play")

    play.click(toggle, play, [timer, play], api_visibility="private")

    def advance(shown: ExplainView | None, at: int):
        return at % shown.run.steps + 1 if shown else gr.skip()

    timer.tick(advance, [view, step], step, api_visibility="private", show_progress="hidden")

    def show_task(chosen: str):
        needs_image = chosen != Task.TXT2IMG
        return gr.ImageMask(visible=needs_image), gr.Slider(visible=needs_image)

    task.change(show_task, task, [editor, strength], api_visibility="private", queue=False)

    # The API: a text-to-image run with exactly /txt2img's parameters; results are the image and the export.
    def explain_api(
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: int,
        guidance_scale: float,
        seed: int,
        width: int,
        height: int,
        schedule: str = AUTOMATIC,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Explain a text-to-image run: returns the final image and the whole run as a .safetensors file."""
        job = GenerationRequest(
            task=Task.TXT2IMG, prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, schedule=schedule,
            steps=steps, guidance_scale=guidance_scale, seed=seed, width=width, height=height,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="sdplay-explain-") as folder:
            yield from run(manager, job, limits, request, progress, job=explain, show=partial(api_results, folder))

    presentation.build(presenting, view, step, chips, colormap, opacity, normalisation, SHARED)

    gr.on([], explain_api, [*c.inputs(), c.width, c.height, c.schedule], [final, export], api_name="explain", **GPU)
    footer = gr.Column()
    explained = ExplainControls(**{part.name: getattr(c, part.name) for part in fields(c)}, view=view, step=step)
    explained.footer = footer
    page.offer(TAB.id, explained)
    page.follow_model(explained)


TAB = Tab("explain", "Explain", build)
