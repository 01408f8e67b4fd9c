"""The Inpaint tab: repaint the masked part of an image; every pixel outside the (blurred) mask comes back unchanged."""

import gradio as gr

from sdplay.generation.send import offer_results
from sdplay.runtime.errors import UserError
from sdplay.runtime.images import EMPTY_MASK_MESSAGE, mask_from_editor, mask_from_upload
from sdplay.runtime.request import GenerationRequest, Task
from sdplay.ui.common import (
    TabParts,
    controls,
    image_upload,
    mask_editor,
    results,
    run,
    user_errors,
    wire_generation,
)
from sdplay.ui.tabs import Page, Tab


def build(page: Page) -> None:
    manager, limits = page.manager, page.limits
    with gr.Row():
        with gr.Column():
            image = mask_editor("Image: paint over what to repaint", 420, image_size=manager.model.native_size)
            with gr.Accordion("Or upload a mask (white = repaint)", open=False):
                mask = image_upload("Mask", 200)
            strength = gr.Slider(0.01, 1, value=0.75, step=0.01, label="Denoising strength")
            with gr.Row():
                mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur")
                only_masked = gr.Checkbox(label="Only masked (crop, generate, paste back)")
                padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels")
            gr.Markdown("Width and height 0 keep the image's size; with *Only masked*, the model's native size.")
            c = controls(manager, limits, size_default=0, fast=True)
        with gr.Column():
            r = results()

    def inpaint(
        request: gr.Request = None, progress=gr.Progress(), *, image: dict | None, mask: str | None = None, **settings
    ):
        """Repaint the masked region: `image` is the editor value (painted layers = mask) or `mask` an upload."""
        with user_errors():
            if not image or image.get("background") is None:
                raise UserError("Upload an image first.")
            painted = mask_from_upload(mask) if mask else mask_from_editor(image)
            if painted is None:
                raise UserError(EMPTY_MASK_MESSAGE)
        job = GenerationRequest(task=Task.INPAINT, image=image["background"], mask=painted, **settings)
        yield from run(manager, job, limits, request, progress)

    inputs = c.named() | {"image": image, "mask": mask, "strength": strength} | c.named("width", "height", "batch_size")
    inputs |= {"mask_blur": mask_blur, "only_masked": only_masked, "padding": padding} | c.named("schedule")
    wire_generation(manager, r, inpaint, inputs, "inpaint")
    parts = TabParts(c, r, image)
    offer_results(page, TAB.id, parts)


TAB = Tab("inpaint", "Inpaint", build)
