"""The Inpaint tab: repaint the masked part of an image; every pixel outside the (blurred) mask comes back unchanged."""

import gradio as gr

from sdplay.runtime.errors import UserError
from sdplay.runtime.images import EMPTY_MASK_MESSAGE, mask_from_editor, mask_from_upload
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import GenerationRequest, Limits, Task
from sdplay.runtime.samplers import AUTOMATIC
from sdplay.ui.common import (
    GPU,
    TabParts,
    controls,
    image_upload,
    mask_editor,
    results,
    run,
    user_errors,
    wire_stop,
)


def build(manager: ModelManager, limits: Limits) -> TabParts:
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
            c = controls(manager, limits, size_default=0)
        with gr.Column():
            r = results()

    def inpaint(
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: int,
        guidance_scale: float,
        seed: int,
        image: dict | None,
        mask: str | None = None,
        strength: float = 0.75,
        width: int = 0,
        height: int = 0,
        batch_size: int = 1,
        mask_blur: int = 4,
        only_masked: bool = False,
        padding: int = 32,
        schedule: str = AUTOMATIC,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Repaint the masked region: `image` is the editor value (painted layers = mask) or `mask` an upload."""
        with user_errors():
            if not image or image.get("background") is None:
                raise UserError("Upload an image first.")
            painted = mask_from_upload(mask) if mask else mask_from_editor(image)
            if painted is None:
                raise UserError(EMPTY_MASK_MESSAGE)
        job = GenerationRequest(
            task=Task.INPAINT, prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, schedule=schedule,
            steps=steps, guidance_scale=guidance_scale, seed=seed, width=width, height=height, batch_size=batch_size,
            image=image["background"], strength=strength, mask=painted, mask_blur=mask_blur,
            only_masked=only_masked, padding=padding,
        )  # fmt: skip
        yield from run(manager, job, limits, request, progress)

    inputs = [*c.inputs(), image, mask, strength, c.width, c.height, c.batch_size, mask_blur, only_masked, padding]
    inputs += [c.schedule]
    event = r.generate.click(inpaint, inputs, r.outputs(), api_name="inpaint", show_progress_on=r.infotext, **GPU)
    wire_stop(manager, r.stop, event)
    return TabParts(c, r, image)
