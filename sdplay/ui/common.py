"""Controls shared by the generation tabs, and the edge where sdplay's errors become Gradio's.

Each tab module builds its own layout from these pieces and wires its own events.
"""

import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePath
from typing import TypeVar

import gradio as gr

from sdplay.runtime.catalog import unknown_words
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobSpec
from sdplay.runtime.generate import PREVIEW_EVERY, Cancelled, GenerationResult, StepUpdate, about, generate
from sdplay.runtime.images import brush_radius, decode_errors, open_image
from sdplay.runtime.models import LoadedModel, ModelManager
from sdplay.runtime.request import GenerationRequest, Limits, size_warnings
from sdplay.runtime.samplers import AUTOMATIC, sampler_names, schedule_names

# Every event that runs the model shares one queue slot: one job on the GPU at a time, across all tabs.
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
# Checks that run as an image is uploaded. No progress overlay: on gr.ImageMask it disarms the brush.
UPLOAD_CHECK = {"show_progress": "hidden", "api_visibility": "private"}
# The mask brush: half-transparent, so the picture shows through; magenta, a colour that images rarely have.
MASK_COLOUR = ("#ff00ff", 0.5)
R = TypeVar("R")
# An absolute path (POSIX, home, Windows or UNC), not the path part of a URL.
PATH = re.compile(r"(?<![\w:/.~\\-])(?:~?/|[A-Za-z]:[\\/]|\\\\)[^\s'\"`,;()\[\]{}<>]+")
log = logging.getLogger(__name__)


def clear_upload_errors(component: gr.Image | gr.ImageEditor) -> gr.Image | gr.ImageEditor:
    """Make an image input report undecodable uploads as a clear `gr.Error` instead of a bare "Error" (or one
    with Pillow's message, which names the upload's path on the server).

    Gradio opens uploads in the component's `preprocess`, before our code runs. We wrap that method on this one
    instance: a subclass would do it too, but Gradio writes a `.pyi` stub next to the module of every subclass.
    """
    preprocess = component.preprocess

    def checked(payload):
        with user_errors(), decode_errors():
            return preprocess(payload)

    component.preprocess = checked
    return component


def refuse_bad_uploads(component: gr.Image | gr.ImageEditor, check: Callable) -> None:
    """Run `check` on each upload; if the upload cannot be read (or `check` raises), show why and clear the input,
    instead of keeping a broken picture until Generate is pressed. `check`'s return value updates the input."""
    event = component.upload(check, component, component, **UPLOAD_CHECK)
    event.failure(lambda: None, None, component, **UPLOAD_CHECK)


def image_upload(label: str, height: int) -> gr.Image:
    """An image input that hands our code the uploaded file's path, so that we decode it safely ourselves."""
    image = clear_upload_errors(gr.Image(label=label, type="filepath", sources=["upload", "clipboard"], height=height))

    def check(path: str | None):
        with user_errors():
            if path:
                open_image(path)
        return gr.skip()

    refuse_bad_uploads(image, check)
    return image


def mask_editor(label: str, height: int, visible: bool = True, image_size: int = 512) -> gr.ImageMask:
    """An image upload to paint the inpainting mask on: the painted layer's alpha is the mask (see images.py).

    The brush starts sized for `image_size` pixels, a picture sent from another tab, and is resized to each upload.
    """
    editor = gr.ImageMask(
        label=label,
        type="pil",
        image_mode="RGBA",
        sources=["upload", "clipboard"],
        brush=mask_brush((image_size, image_size)),
        layers=False,
        height=height,
        visible=visible,
    )
    clear_upload_errors(editor)

    def fit_brush(value: dict | None):
        if not value or value["background"] is None:
            return gr.skip()
        return gr.ImageMask(brush=mask_brush(value["background"].size))

    refuse_bad_uploads(editor, fit_brush)
    return editor


def mask_brush(size: tuple[int, int]) -> gr.Brush:
    """The mask brush for a picture of `size` pixels."""
    return gr.Brush(colors=[MASK_COLOUR], color_mode="fixed", default_size=brush_radius(size))


@dataclass
class Controls:
    """The A1111-style controls every generation tab has, named like the API parameters they feed."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    guidance_scale: gr.Slider
    seed: gr.Number
    width: gr.Slider
    height: gr.Slider
    batch_size: gr.Slider
    examples: gr.Dataset
    native_sized: bool  # width and height default to the model's size (not an input image's)
    prefilled: bool = False  # the prompt starts as the model's first example prompt (Explain's)
    fast: bool = False  # starts on the model's few-step path, if it has one (the generation tabs)

    def inputs(self) -> list[gr.components.Component]:
        return [self.prompt, self.negative_prompt, self.sampler, self.steps, self.guidance_scale, self.seed]

    def named(self, *names: str) -> dict[str, gr.components.Component]:
        """Controls as an event's keyword inputs (`inputs_kwargs`), named like the request fields and API
        parameters they feed; with no names, the six every tab has."""
        names = names or ("prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "seed")
        return {name: getattr(self, name) for name in names}

    def model_dependent(self) -> list[gr.components.Component]:
        """The controls that `recommended` updates."""
        sizes = [self.width, self.height] if self.native_sized else []
        prompt = [self.prompt] if self.prefilled else []
        return [self.sampler, self.schedule, self.steps, self.guidance_scale, self.examples, *sizes, *prompt]

    def recommended(self, model: LoadedModel) -> dict[gr.components.Component, object]:
        """Updates that apply `model`'s recommended settings and examples to these controls (on load)."""
        settings = model.settings.generation if self.fast else model.settings
        updates = {
            self.sampler: gr.Dropdown(choices=sampler_names(model.allows_lcm), value=settings.sampler),
            self.schedule: gr.Dropdown(choices=schedule_names(settings.sampler), value=settings.schedule),
            self.steps: settings.steps,
            self.guidance_scale: settings.guidance_scale,
            self.examples: gr.Dataset(samples=[[example] for example in settings.examples]),
        }
        if self.native_sized:
            updates[self.width] = updates[self.height] = settings.size or model.native_size
        if self.prefilled:
            updates[self.prompt] = first_example(model)
        return updates


@dataclass
class Results:
    """The outputs of a generation tab. Its event shows progress on `infotext` (`show_progress_on`): Gradio's
    progress overlay on the gallery would hide the previews at every step."""

    gallery: gr.Gallery
    infotext: gr.Textbox
    seed_used: gr.Number
    generate: gr.Button
    stop: gr.Button
    to_img2img: gr.Button
    to_inpaint: gr.Button
    ran: gr.State  # each image's GenerationRequest as it ran: what "Send to" copies (not part of the API)

    def outputs(self) -> list[gr.components.Component]:
        return [self.gallery, self.infotext, self.seed_used, self.ran]


@dataclass
class TabParts:
    """What the page wires of a generation tab (layout.py, by the tab's id): its controls and results, and the image
    input that "Send to" and PNG Info fill (None for text-to-image)."""

    controls: Controls
    results: Results
    image: gr.Image | gr.ImageEditor | None = None


def first_example(model: LoadedModel) -> str:
    """The prompt a prefilled prompt box starts with: the model's first example prompt, if it has any."""
    return next(iter(model.settings.examples), "")


def prompt_boxes(examples: list[str], text: str = "") -> tuple[gr.Textbox, gr.Textbox, gr.Dataset]:
    prompt = gr.Textbox(text, label="Prompt", lines=3, placeholder="Describe the image", elem_classes="prompt")
    samples = gr.Examples(examples, prompt, label="Example prompts for this model").dataset
    negative = gr.Textbox(label="Negative prompt", lines=2, placeholder="What the image should not have")
    return prompt, negative, samples


def controls(
    manager: ModelManager,
    limits: Limits,
    size_default: int | None = None,
    batch: bool = True,
    prefilled: bool = False,
    fast: bool = False,
) -> Controls:
    """Prompt boxes and sampling settings, set to the loaded model's recommended ones; `size_default` 0 means "the
    input image's size" (img2img, inpaint); `batch` False hides the batch size (Explain records one image);
    `prefilled` starts the prompt as the model's first example, and sets it again when a model loads; `fast` starts
    on the model's few-step path (`ModelSettings.generation`), for the tabs that make pictures rather than explain."""
    model = manager.model
    settings = model.settings.generation if fast else model.settings
    native = (settings.size or model.native_size) if size_default is None else size_default
    prompt, negative, examples = prompt_boxes(list(settings.examples), first_example(model) if prefilled else "")
    with gr.Row():
        # Custom values reach our validation, which also reads A1111's older names ("DPM++ 2M Karras", "PNDM").
        sampler = gr.Dropdown(
            sampler_names(model.allows_lcm), value=settings.sampler, label="Sampler", allow_custom_value=True
        )
        schedule = gr.Dropdown(
            schedule_names(settings.sampler), value=settings.schedule, label="Schedule type", allow_custom_value=True,
            info="Which noise levels the sampler visits; Automatic is the sampler's default.",
        )  # fmt: skip
        steps = gr.Slider(1, limits.max_steps, value=settings.steps, step=1, label="Steps")
    with gr.Row():
        width = gr.Slider(0 if size_default == 0 else 64, limits.max_size, value=native, step=8, label="Width")
        height = gr.Slider(0 if size_default == 0 else 64, limits.max_size, value=native, step=8, label="Height")
    with gr.Row():
        guidance = gr.Slider(0, 30, value=settings.guidance_scale, step=0.5, label="CFG scale")
        batch_size = gr.Slider(1, limits.max_batch, value=1, step=1, label="Batch size", visible=batch)
        seed = gr.Number(-1, label="Seed (-1: random)", precision=0, minimum=-1)

    def offer_schedules(chosen_sampler: str, current: str) -> gr.Dropdown:
        """Only the schedule types diffusers has for this sampler; keep the current one if it is among them."""
        names = schedule_names(chosen_sampler)
        return gr.Dropdown(choices=names, value=current if current in names else AUTOMATIC)

    # On the user's choice only: code that sets a sampler (load, restore, send to) sets its schedule's choices too.
    sampler.input(
        offer_schedules, [sampler, schedule], schedule, queue=False, show_progress="hidden", api_visibility="private"
    )
    return Controls(
        prompt=prompt, negative_prompt=negative, sampler=sampler, schedule=schedule, steps=steps,
        guidance_scale=guidance, seed=seed, width=width, height=height, batch_size=batch_size, examples=examples,
        native_sized=size_default is None, prefilled=prefilled, fast=fast,
    )  # fmt: skip


def results() -> Results:
    generate = gr.Button("Generate", variant="primary", elem_classes="generate")
    stop = gr.Button("Stop", variant="stop")
    gallery = gr.Gallery(
        label="Images",
        format="png",
        columns=2,
        height=520,
        object_fit="contain",
        interactive=False,
        elem_classes="results",
    )
    with gr.Row():
        to_img2img = gr.Button("Send to Image-to-Image", size="sm")
        to_inpaint = gr.Button("Send to Inpaint", size="sm")
    infotext = gr.Textbox(label="Generation parameters", lines=3, buttons=["copy"])
    seed_used = gr.Number(None, label="Seed used", precision=0, interactive=False)
    return Results(gallery, infotext, seed_used, generate, stop, to_img2img, to_inpaint, gr.State([]))


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a `UserError` to the user as a `gr.Error` with its message, and any other exception as one line that
    names it (its traceback goes to the server's log). The server goes on serving.

    Every message is scrubbed of server paths on its way out, whoever wrote it: the last line of defence.
    """
    try:
        yield
    except UserError as error:
        raise gr.Error(without_paths(str(error))) from error
    except gr.Error as error:
        error.message = without_paths(error.message)
        raise
    except Exception as error:
        log.exception("unexpected error in a job")
        raise gr.Error(f"Something went wrong: {one_line(error)}. The details are in the server's log.") from error


def without_paths(text: str) -> str:
    """`text` with each absolute path in it (POSIX, home, Windows or UNC) cut to its last name."""
    return PATH.sub(lambda path: PurePath(path.group().replace("\\", "/")).name or "…", text)


def one_line(error: BaseException) -> str:
    """`ClassName: message` on one line, without server paths."""
    text = without_paths(" ".join(str(error).split()))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _gallery(item: StepUpdate | GenerationResult) -> tuple:
    if isinstance(item, StepUpdate):
        captions = [f"Stopped at step {item.step} of {item.total}" if item.stopped else None] * len(item.previews)
        return list(zip(item.previews, captions, strict=True)), gr.skip(), gr.skip(), []  # previews: no settings
    for warning in item.warnings:
        gr.Warning(warning)
    captions = [f"Seed {seed}" for seed in item.seeds]
    return list(zip(item.images, captions, strict=True)), item.infotexts[0], item.seeds[0], item.requests


def warnings_before(model: LoadedModel, request: GenerationRequest, limits: Limits) -> list[str]:
    """What a user should hear as a run starts: a size that was rounded or is far from the model's, and words
    that a model with a closed vocabulary (the bundled one) never saw."""
    warnings = size_warnings(request, model.settings.size or model.native_size, limits)
    unknown = unknown_words(f"{request.prompt} {request.negative_prompt}", model.settings.vocabulary)
    if unknown:
        warnings.append(
            f"{model.name} has never seen the words {', '.join(map(repr, unknown))}: they act as noise. "
            "The words it knows are listed under the model box."
        )
    return warnings


def run(
    manager: ModelManager,
    request: GenerationRequest,
    limits: Limits,
    session: gr.Request,
    progress: gr.Progress,
    *,
    job: Callable[..., R] = generate,
    show: Callable[[StepUpdate | R], tuple | dict] = _gallery,
) -> Iterator[tuple | dict]:
    """Stream `job` (`generate` or `explain`) into UI updates: `show` turns the job's previews and its result into
    the event's outputs; by default x̂₀ previews while it runs, then the PNGs (gallery, infotext, seed). The manager's
    executor runs the job, in this process or in a ZeroGPU worker.

    Every step moves the progress bar ("Step 7/20 · about 3 s left"); a Stop keeps the preview of the step it ended.
    Previews go only to a page that shows them (Gradio's frontend says so in a header): an API client would
    download every one before its result, and gets an empty update instead.
    """
    owner = session.session_hash if session else None
    watched = session is None or from_web_page(session)
    with user_errors():
        for warning in warnings_before(manager.model, request, limits):
            gr.Warning(warning)
        speeds = manager.executor.seconds_per_step
        speed = (manager.model.name, request.width, request.height, request.batch_size)
        previous = speeds.get(speed)
        progress(0, desc=f"Starting · {about(request.steps * previous)} left" if previous else "Starting")
        shown = -math.inf  # when the progress bar last moved
        try:
            for item in manager.executor.run(JobSpec(job, request, limits, owner)):
                if isinstance(item, StepUpdate):
                    speeds[speed] = item.seconds_per_step
                    if item.previews or time.monotonic() - shown >= PREVIEW_EVERY:
                        progress((item.step, item.total), desc=item.describe())
                        shown = time.monotonic()
                    if not item.previews:  # none was due at this step
                        continue
                    if not watched:  # no preview for an API caller, but a yield: Gradio cancels a job only there
                        yield gr.skip()
                        continue
                yield show(item)
        except Cancelled as stopped:
            if not watched:  # an API caller: a stopped job has no result, and must not come back looking like one
                raise gr.Error(str(stopped)) from None
            gr.Info(str(stopped))
            if stopped.update and stopped.update.previews:
                yield show(stopped.update)


def wire_generation(manager: ModelManager, r: Results, handler: Callable, inputs: dict, api_name: str) -> None:
    """Generate runs `handler` (a generation tab's, `inputs` by keyword) in the GPU queue as API `api_name`, with
    its progress on the infotext; Stop ends it."""
    event = r.generate.click(
        handler, inputs_kwargs=inputs, outputs=r.outputs(), api_name=api_name, show_progress_on=r.infotext, **GPU
    )
    wire_stop(manager, r.stop, event)


def from_web_page(request: gr.Request) -> bool:
    """Whether `request` comes from sdplay's page (Gradio's frontend says so in a header), not from a script."""
    return request.headers.get("x-gradio-user") == "app"


def wire_stop(manager: ModelManager, stop: gr.Button, event) -> None:
    """Stop ends the session's running job within a step, and the job then shows where it stopped. A job still
    waiting in the queue is taken out of it by Gradio's cancel instead, which would also drop a running job's last
    update: so it is triggered (through a counter's change) only when nothing of this session was running.

    Both run outside the GPU queue, so they are never stuck behind it. A request without a session (a raw HTTP
    call) owns no job, so it stops nothing.
    """
    not_running = gr.State(0)

    def interrupt(presses: int, request: gr.Request) -> int:
        if not request.session_hash or manager.interrupt(request.session_hash):
            return gr.skip()
        return presses + 1

    stop.click(interrupt, not_running, not_running, queue=False, api_visibility="private")
    not_running.change(None, None, None, cancels=[event], queue=False, api_visibility="private")


def job_result(
    manager: ModelManager, work: Callable[..., R], job: object, limits: Limits, session: gr.Request | None
) -> R:
    """Run one job that reports no steps (a view asking the model something) through the executor as the session's
    job, and return its result; its errors reach the user as `gr.Error`s (see `user_errors`)."""
    owner = session.session_hash if session else None
    with user_errors():
        *_, result = manager.executor.run(JobSpec(work, job, limits, owner))
    return result
