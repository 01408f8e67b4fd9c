"""The Image-to-Image tab: an image is noised to `strength` and denoised again towards the prompt."""

import gradio as gr

from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import GenerationRequest, Limits, Task
from sdplay.runtime.samplers import AUTOMATIC
from sdplay.ui.common import GPU, TabParts, controls, image_upload, results, run, wire_stop


def build(manager: ModelManager, limits: Limits) -> TabParts:
    with gr.Row():
        with gr.Column():
            image = image_upload("Image", 360)
            strength = gr.Slider(0.01, 1, value=0.75, step=0.01, label="Denoising strength")
            gr.Markdown("Width and height 0 keep the input image's size (rounded to multiples of 8).")
            c = controls(manager, limits, size_default=0)
        with gr.Column():
            r = results()

    def img2img(
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: int,
        guidance_scale: float,
        seed: int,
        image: str | None,
        strength: float = 0.75,
        width: int = 0,
        height: int = 0,
        batch_size: int = 1,
        schedule: str = AUTOMATIC,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Repaint an image towards the prompt; `strength` 0..1 is how much noise is added first."""
        job = GenerationRequest(
            task=Task.IMG2IMG, prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, schedule=schedule,
            steps=steps, guidance_scale=guidance_scale, seed=seed, width=width, height=height, batch_size=batch_size,
            image=image, strength=strength,
        )  # fmt: skip
        yield from run(manager, job, limits, request, progress)

    inputs = [*c.inputs(), image, strength, c.width, c.height, c.batch_size, c.schedule]
    event = r.generate.click(img2img, inputs, r.outputs(), api_name="img2img", show_progress_on=r.infotext, **GPU)
    wire_stop(manager, r.stop, event)
    return TabParts(c, r, image)
