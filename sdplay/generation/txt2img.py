"""The Text-to-Image tab: a prompt and settings in, a batch of PNGs out."""

import gradio as gr

from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import GenerationRequest, Limits, Task
from sdplay.runtime.samplers import AUTOMATIC
from sdplay.ui.common import GPU, TabParts, controls, results, run, wire_stop


def build(manager: ModelManager, limits: Limits) -> TabParts:
    with gr.Row():
        with gr.Column():
            c = controls(manager, limits)
        with gr.Column():
            r = results()

    def txt2img(
        prompt: str,
        negative_prompt: str,
        sampler: str,
        steps: int,
        guidance_scale: float,
        seed: int,
        width: int,
        height: int,
        batch_size: int = 1,
        schedule: str = AUTOMATIC,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Generate images from a text prompt; returns the PNGs (with A1111 `parameters`), infotext and seed."""
        job = GenerationRequest(
            task=Task.TXT2IMG, prompt=prompt, negative_prompt=negative_prompt, sampler=sampler, schedule=schedule,
            steps=steps, guidance_scale=guidance_scale, seed=seed, width=width, height=height, batch_size=batch_size,
        )  # fmt: skip
        yield from run(manager, job, limits, request, progress)

    inputs = [*c.inputs(), c.width, c.height, c.batch_size, c.schedule]
    event = r.generate.click(txt2img, inputs, r.outputs(), api_name="txt2img", show_progress_on=r.infotext, **GPU)
    wire_stop(manager, r.stop, event)
    return TabParts(c, r)
