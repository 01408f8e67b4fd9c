"""The whole app: the model bar on top, one tab per task, and the wiring between tabs (send to, restore).

`build_demo()` returns a queued `gr.Blocks`; app.py launches it.
"""

import gradio as gr
from PIL import Image

from sdplay.compare import ui as compare
from sdplay.explain import ui as explain
from sdplay.generation import img2img, inpaint, pnginfo, txt2img
from sdplay.inside import ui as inside
from sdplay.lesson import ui as lesson
from sdplay.runtime.downloads import DownloadProgress
from sdplay.runtime.errors import UserError
from sdplay.runtime.images import decode_errors
from sdplay.runtime.metadata import parse_infotext, read_infotext, settings_from_infotext
from sdplay.runtime.models import LoadedModel, ModelManager, ModelSwitch, SwitchPolicy
from sdplay.runtime.request import Limits, PlotLimits
from sdplay.runtime.samplers import schedule_names
from sdplay.ui.common import GPU, Controls, Results, TabParts, from_web_page, mask_brush, user_errors, without_paths
from sdplay.ui.fair_share import one_job_per_session
from sdplay.xyz import ui as xyz

# The controls an infotext restores, by their `Controls` field names.
CONTROL_FIELDS = [
    "prompt", "negative_prompt", "sampler", "schedule", "steps", "guidance_scale", "seed", "width", "height",
]  # fmt: skip


def model_notes(model: LoadedModel) -> str:
    """What the UI says about the loaded model: its recommended settings, and the words it knows if it is closed."""
    settings = model.settings
    lines = [f"**Recommended for {model.name}** (applied on load): {settings.summary(model.native_size)}"]
    if settings.note:
        lines.append(settings.note)
    if settings.vocabulary:
        lines.append(f"It knows only these {len(settings.vocabulary)} words: *{', '.join(settings.vocabulary)}*.")
    return "  \n".join(lines)


def switch_info(switch: ModelSwitch) -> str:
    """What the model box says about switching models on this server."""
    if not switch.open:
        return "This server serves this model only."
    if switch.policy == SwitchPolicy.CATALOG:
        offer = "The models this server offers."
    else:
        offer = "A Hub id (org/name) downloads on first use; local models are set with --model."
    who = "Only the admin may switch models, for everyone." if switch.admin else "Loading one changes it for everyone."
    return f"{offer} {who}"


def model_bar(demo: gr.Blocks, manager: ModelManager, switch: ModelSwitch, tabs: list[Controls]) -> None:
    """Pick and load a model, as `switch` allows; loading refreshes the status line and applies the model's
    recommended settings and examples to every tab. A failed load changes nothing on the page and says why.
    A Hub model's download shows its bytes over the status line (reported by the manager on the handler's own
    thread: Gradio's track_tqdm would not see huggingface_hub's bars, which move on other threads).

    The model is everyone's: the status line says who switched it and when, and pages show the current model when
    they open and its status line every half minute.
    """
    built_for = manager.model
    with gr.Row():
        choice = gr.Dropdown(
            list(switch.models), value=built_for.name, label="Model", scale=4, info=switch_info(switch),
            allow_custom_value=switch.policy == SwitchPolicy.ANY, interactive=switch.open,
        )  # fmt: skip
        load = gr.Button("Load", scale=1, visible=switch.open)
    status = gr.Markdown(manager.status(), elem_classes="status")
    notes = gr.Markdown(model_notes(built_for), elem_classes="model-notes")

    def applied(model: LoadedModel) -> dict:
        # gr.update, not gr.Dropdown(value=...): a new Dropdown warns that its value is not among its (no) choices.
        updates = {choice: gr.update(value=model.name), status: manager.status(), notes: model_notes(model)}
        for controls in tabs:
            updates |= controls.recommended(model)
        return updates

    def load_model(name: str | None, request: gr.Request, progress=gr.Progress()) -> dict:
        def downloading(report: DownloadProgress) -> None:
            progress(report.fraction, desc=report.describe())

        with user_errors():
            try:
                source, allow_local = switch.source(name or "", request.username)
                by = request.username or "a visitor"
                model = manager.load(source, allow_local=allow_local, by=by, progress=downloading)
            except UserError as error:
                if not from_web_page(request):  # a script hears no warning: refuse with an error
                    raise gr.Error(f"The model was not loaded: {error}") from error
                gr.Warning(without_paths(str(error)), title="The model was not loaded")
                return {choice: gr.update(value=manager.model.name), status: manager.status()}
        gr.Info(f"Loaded {model.name}.")
        return applied(model)

    def opened() -> dict:
        """A page opening after a switch shows the model now loaded, with its settings."""
        model = manager.model
        return {status: manager.status()} if model is built_for else applied(model)

    outputs = [choice, status, notes, *(component for c in tabs for component in c.model_dependent())]
    load.click(load_model, choice, outputs, api_visibility="private", show_progress_on=[status], **GPU)
    quiet = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}  # not in the GPU queue
    demo.load(opened, None, outputs, **quiet)
    gr.Timer(30).tick(manager.status, None, status, **quiet)


def build_demo(
    manager: ModelManager,
    limits: Limits,
    switch: ModelSwitch,
    plot_limits: PlotLimits = PlotLimits(),
    workers: int = 1,
) -> gr.Blocks:
    """The app; `workers` is how many jobs the executor runs at once (`manager.executor.workers`: 1 here, a Ray
    pool's replicas), and so how many the GPU queue lets run."""
    with gr.Blocks(title="sdplay", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# sdplay · a Stable Diffusion playground")
        model_slot = gr.Column()
        with gr.Tabs() as tabs:
            with gr.Tab("Text-to-Image", id="txt2img"):
                generation = {"txt2img": txt2img.build(manager, limits)}
            with gr.Tab("Image-to-Image", id="img2img"):
                generation["img2img"] = img2img.build(manager, limits)
            with gr.Tab("Inpaint", id="inpaint"):
                generation["inpaint"] = inpaint.build(manager, limits)
            with gr.Tab("X/Y/Z plot", id="xyz"):
                plot = xyz.build(manager, limits, switch, plot_limits)
            with gr.Tab("Explain", id="explain"):
                explained = explain.build(manager, limits)
                to_compare = gr.Button("Compare with a change, or ablate a word: open this prompt in Compare")
            with gr.Tab("Inside", id="inside"):
                inside.build(manager, limits, explained)
            with gr.Tab("Lesson", id="lesson"):
                lessons = lesson.build(manager, limits)
            with gr.Tab("Compare", id="compare"):
                compared = compare.build(manager, limits)
            with gr.Tab("PNG Info", id="pnginfo"):
                info_image, info_text, send = pnginfo.build()
        with model_slot:
            tab_controls = [parts.controls for parts in generation.values()]
            model_bar(demo, manager, switch, [*tab_controls, plot, explained, compared])

        for parts in generation.values():
            _wire_send(parts.results, tabs, generation)
        for tab, button in send.items():
            _wire_restore(button, tab, generation[tab], info_image, info_text, tabs)
        compare.send_settings(to_compare, explained, compared, tabs)
        lesson.send_tries(lessons, explained, compared, tabs)
    share_gpu(demo, workers)
    demo.queue(api_open=False, max_size=32)
    one_job_per_session(demo, GPU["concurrency_id"])  # so that one session cannot fill the queue of 32
    one_job_per_session(demo, xyz.PLOT["concurrency_id"])  # and one plot per session (its cells join the GPU's)
    # Gradio's queue looks for new events every millisecond, also while a job runs: a thread of the job's process
    # waking 1000 times a second slowed generation on a CPU by ~6%. Every 10 ms is still instant to people.
    demo._queue.sleep_when_free = 0.01
    return demo


def share_gpu(demo: gr.Blocks, workers: int) -> None:
    """Let `workers` jobs of the GPU queue run at once: one per worker of the executor. Every event of the queue
    gets the same limit, since Gradio applies the lowest of a queue's events (the tabs declare `GPU`'s, one)."""
    for fn in demo.fns.values():
        if fn.concurrency_id == GPU["concurrency_id"]:
            fn.concurrency_limit = workers


def _settings_updates(text: str) -> list:
    """Values for `CONTROL_FIELDS` from an infotext, `gr.skip()` for what it does not record."""
    info = parse_infotext(text or "")
    settings = settings_from_infotext(info)
    if "Sampler" in info.params and "sampler" not in settings:
        gr.Warning(f"sdplay has no sampler {info.params['Sampler']!r}: the tab keeps its own.")
    if "sampler" in settings:
        settings["schedule"] = gr.Dropdown(choices=schedule_names(settings["sampler"]), value=settings["schedule"])
    return [settings.get(name, gr.skip()) for name in CONTROL_FIELDS]


def _image_value(tab: str, path: str) -> str | dict:
    """An image file as the value of `tab`'s image input: the inpaint editor takes layers, and a brush sized to it."""
    if tab == "img2img":
        return path
    with user_errors(), decode_errors(), Image.open(path) as picture:  # the server may have deleted it since
        size = picture.size
    return gr.update(value={"background": path, "layers": [], "composite": path}, brush=mask_brush(size))


def _wire_send(results: Results, tabs: gr.Tabs, targets: dict[str, TabParts]) -> None:
    """ "Send to" buttons copy the selected result (the first if none is selected) into another tab, with the
    settings that made it (read back from the image's own infotext, so each image of a batch keeps its seed)."""
    selected = gr.State(0)

    def remember(event: gr.SelectData) -> int:
        return event.index

    results.gallery.select(remember, None, selected, api_visibility="private")

    def pick(gallery: list | None, index: int) -> str:
        if not gallery:
            raise gr.Error("Generate an image first.")
        return gallery[min(index, len(gallery) - 1)][0]

    for tab, button in (("img2img", results.to_img2img), ("inpaint", results.to_inpaint)):
        target = targets[tab]

        def send(gallery: list | None, index: int, tab: str = tab):
            path = pick(gallery, index)
            with user_errors(), decode_errors(), Image.open(path) as picture:  # the server may have deleted it since
                text = read_infotext(picture) or ""
            return *_settings_updates(text), _image_value(tab, path), gr.Tabs(selected=tab)

        outputs = [*(getattr(target.controls, name) for name in CONTROL_FIELDS), target.image, tabs]
        button.click(send, [results.gallery, selected], outputs, api_visibility="private")


def _wire_restore(button, tab: str, target: TabParts, info_image, info_text, tabs: gr.Tabs) -> None:
    """PNG Info's "Send to" restores the recorded settings (and, for image tabs, the image) into `tab`."""
    fields = [getattr(target.controls, name) for name in CONTROL_FIELDS]
    image = target.image

    def restore(text: str, path: str | None):
        updates = _settings_updates(text)
        if image is None:
            return *updates, gr.Tabs(selected=tab)
        return *updates, _image_value(tab, path) if path else gr.skip(), gr.Tabs(selected=tab)

    outputs = [*fields, *([image] if image is not None else []), tabs]
    button.click(restore, [info_text, info_image], outputs, api_visibility="private")
