"""The Image-to-Image tab: an image is noised to `strength` and denoised again towards the prompt."""

import gradio as gr

from sdplay.generation.send import offer_results
from sdplay.runtime.request import GenerationRequest, Task
from sdplay.ui.common import TabParts, controls, image_upload, results, run, wire_generation
from sdplay.ui.tabs import Page, Tab


def build(page: Page) -> None:
    manager, limits = page.manager, page.limits
    with gr.Row():
        with gr.Column():
            image = image_upload("Image", 360)
            strength = gr.Slider(0.01, 1, value=0.75, step=0.01, label="Denoising strength")
            gr.Markdown("Width and height 0 keep the input image's size (rounded to multiples of 8).")
            c = controls(manager, limits, size_default=0, fast=True)
        with gr.Column():
            r = results()

    def img2img(request: gr.Request = None, progress=gr.Progress(), *, image: str | None, **settings):
        """Repaint an image towards the prompt; `strength` 0..1 is how much noise is added first."""
        job = GenerationRequest(task=Task.IMG2IMG, image=image, **settings)
        yield from run(manager, job, limits, request, progress)

    inputs = c.named() | {"image": image, "strength": strength} | c.named("width", "height", "batch_size", "schedule")
    wire_generation(manager, r, img2img, inputs, "img2img")
    parts = TabParts(c, r, image)
    offer_results(page, TAB.id, parts)


TAB = Tab("img2img", "Image-to-Image", build)
