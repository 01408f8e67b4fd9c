"""Controls shared by the generation tabs, and the edge where sdplay's errors become Gradio's.

Each tab module builds its own layout from these pieces and wires its own events.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import gradio as gr
from PIL import Image

from sdplay.errors import UserError
from sdplay.generate import Cancelled, GenerationResult, StepUpdate, generate, stream
from sdplay.images import TOO_LARGE_MESSAGE
from sdplay.models import ModelManager
from sdplay.requests import GenerationRequest, Limits
from sdplay.samplers import DEFAULT_SAMPLER, sampler_names

# Every event that runs the model shares one queue slot: one job on the GPU at a time, across all tabs.
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
DECODE_ERRORS = (OSError, SyntaxError, ValueError)
R = TypeVar("R")


def clear_upload_errors(component: gr.Image | gr.ImageEditor) -> gr.Image | gr.ImageEditor:
    """Make an image input report undecodable uploads as a clear `gr.Error` instead of a bare "Error".

    Gradio opens uploads in the component's `preprocess`, before our code runs. We wrap that method on this one
    instance: a subclass would do it too, but Gradio writes a `.pyi` stub next to the module of every subclass.
    """
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise gr.Error(TOO_LARGE_MESSAGE) from error
        except DECODE_ERRORS as error:
            raise gr.Error(f"Could not read the uploaded image: {error}") from error

    component.preprocess = checked
    return component


def image_upload(label: str, height: int) -> gr.Image:
    """An image input that hands our code the uploaded file's path, so that we decode it safely ourselves."""
    return clear_upload_errors(gr.Image(label=label, type="filepath", sources=["upload", "clipboard"], height=height))


def mask_editor(label: str, height: int, visible: bool = True) -> gr.ImageEditor:
    """An image upload to paint the inpainting mask on: the painted layer's alpha is the mask (see images.py)."""
    editor = gr.ImageMask(
        label=label,
        type="pil",
        image_mode="RGBA",
        sources=["upload", "clipboard"],
        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
        layers=False,
        height=height,
        visible=visible,
    )
    return clear_upload_errors(editor)


@dataclass
class Controls:
    """The A1111-style controls every generation tab has, named like the API parameters they feed."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    steps: gr.Slider
    guidance_scale: gr.Slider
    seed: gr.Number
    width: gr.Slider
    height: gr.Slider
    batch_size: gr.Slider

    def inputs(self) -> list[gr.components.Component]:
        return [self.prompt, self.negative_prompt, self.sampler, self.steps, self.guidance_scale, self.seed]


@dataclass
class Results:
    gallery: gr.Gallery
    infotext: gr.Textbox
    seed_used: gr.Number
    generate: gr.Button
    stop: gr.Button
    to_img2img: gr.Button
    to_inpaint: gr.Button

    def outputs(self) -> list[gr.components.Component]:
        return [self.gallery, self.infotext, self.seed_used]


def prompt_boxes(examples: list[str]) -> tuple[gr.Textbox, gr.Textbox]:
    prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Describe the image", elem_classes="prompt")
    if examples:
        gr.Examples(examples, prompt, label="Example prompts")
    negative = gr.Textbox(label="Negative prompt", lines=2, placeholder="What the image should not have")
    return prompt, negative


def controls(
    manager: ModelManager, limits: Limits, examples: list[str], size_default: int | None = None, batch: bool = True
) -> Controls:
    """Prompt boxes and sampling settings; `size_default` 0 means "the input image's size" (img2img, inpaint);
    `batch` False hides the batch size (Explain records one image)."""
    model = manager.model
    native = model.native_size if size_default is None else size_default
    prompt, negative = prompt_boxes(examples)
    with gr.Row():
        sampler = gr.Dropdown(sampler_names(model.allows_lcm), value=DEFAULT_SAMPLER, label="Sampler")
        steps = gr.Slider(1, limits.max_steps, value=20, step=1, label="Steps")
    with gr.Row():
        width = gr.Slider(0 if size_default == 0 else 64, limits.max_size, value=native, step=8, label="Width")
        height = gr.Slider(0 if size_default == 0 else 64, limits.max_size, value=native, step=8, label="Height")
    with gr.Row():
        guidance = gr.Slider(0, 30, value=7, step=0.5, label="CFG scale")
        batch_size = gr.Slider(1, limits.max_batch, value=1, step=1, label="Batch size", visible=batch)
        seed = gr.Number(-1, label="Seed (-1: random)", precision=0, minimum=-1)
    return Controls(prompt, negative, sampler, steps, guidance, seed, width, height, batch_size)


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
    return Results(gallery, infotext, seed_used, generate, stop, to_img2img, to_inpaint)


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a `UserError` to the user as a `gr.Error` with its message; the server goes on serving."""
    try:
        yield
    except UserError as error:
        raise gr.Error(str(error)) from error


def _gallery(item: StepUpdate | GenerationResult) -> tuple:
    if isinstance(item, StepUpdate):
        return item.previews, gr.skip(), gr.skip()
    for warning in item.warnings:
        gr.Warning(warning)
    captions = [f"Seed {seed}" for seed in item.seeds]
    return list(zip(item.images, captions, strict=True)), item.infotexts[0], item.seeds[0]


def run(
    manager: ModelManager,
    request: GenerationRequest,
    limits: Limits,
    session: gr.Request,
    progress: gr.Progress,
    job: Callable[..., R] = generate,
    show: Callable[[StepUpdate | R], tuple | dict] = _gallery,
) -> Iterator[tuple | dict]:
    """Stream `job` (`generate` or `explain`) into UI updates: `show` turns each step's update and the job's
    result into the event's outputs; by default x̂₀ previews while it runs, then the PNGs (gallery, infotext, seed).
    """
    owner = session.session_hash if session else None
    try:
        with user_errors():
            for item in stream(partial(job, manager, request, limits, owner=owner)):
                if isinstance(item, StepUpdate):
                    progress((item.step, item.total), desc="Denoising")
                yield show(item)
    except Cancelled:
        gr.Info("Stopped.")


def wire_stop(manager: ModelManager, results: Results, event) -> None:
    """Stop ends the session's own job within a step; it runs outside the GPU queue so it is never stuck behind it."""

    def stop(request: gr.Request) -> None:
        manager.interrupt(request.session_hash)

    results.stop.click(stop, None, None, cancels=[event], queue=False, api_visibility="private")
